"""Runnable Trio versions of the seed document's four usage examples.

Each module holds the backend function the seed shows, written for roomcast, and a
`main()` that starts a service, connects a demo client and shows the function at
work. Run one with `.venv/bin/python examples/upload_done.py` (or `-m examples.upload_done`).
"""
