"""A standalone HTTP origin for benchmarks: serves a folder with Range, ETag and If-Match
(aiohttp's FileResponse). Usage: python bench/origin.py FOLDER PORT"""
from __future__ import annotations

import sys

from aiohttp import web


def main() -> None:
    folder, port = sys.argv[1], int(sys.argv[2])
    app = web.Application()
    app.router.add_static("/files", folder)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
