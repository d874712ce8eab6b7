"""The benchmark harness behind `make bench` (issue 8; results in docs/performance.md).

    procs.py      the processes under test: redis-server, the broker (`broker serve --workers N`),
                  OpenBao with integrated raft storage (initialized and unsealed here)
    load.py       closed-loop load generation (grpc.aio, N in flight over balanced channels)
    scenarios.py  one function per measurement
    report.py     the table, the targets, bench/results.json and the PNG chart
    profile.py    a py-spy profile of one worker under mint load (`python -m bench profile`)
    redis_client.py  client CPU of one Redis round trip, by client (`python -m bench redis-client`)
    __main__.py   `python -m bench` (run, profile)

The load generator is this process; the broker, Redis and OpenBao are subprocesses on the same
machine (the targets are ratios measured in one run on one box).
"""
