"""``python -m bench``: the sync benchmark (bench/run.py); ``python -m bench ready``: time from
container start to the first answered job (bench/ready.py); ``python -m bench uptodate``: the
read path, boto3 vs the boto3-free client (bench/readpath.py); ``python -m bench rss``: peak RSS
on a big synthetic tree (bench/rss.py); ``python -m bench blob``: cold pulls of a big blob
and a tree against one object from the same server (bench/blob.py)."""

import sys

if sys.argv[1:2] == ["rss"]:
    from bench.rss import main as rss_main

    sys.exit(rss_main(sys.argv[2:]))
if sys.argv[1:2] == ["ready"]:
    from bench.ready import main as ready_main

    sys.exit(ready_main(sys.argv[2:]))

if sys.argv[1:2] == ["blob"]:
    from bench.blob import main as blob_main

    sys.exit(blob_main(sys.argv[2:]))

if sys.argv[1:2] == ["uptodate"]:
    from bench.readpath import main as readpath_main

    sys.exit(readpath_main(sys.argv[2:]))

from bench.run import main

sys.exit(main())
