"""The bounded soak (bench/soak.py for 16 refits, a signed refit about every second alternating the
CLI and the file drop, under continuous inference): no torn result, no failed inference or
apply, open descriptors and threads flat, store and drop folder bounded. The 30-minute run is
`make soak` (docs/reliability.md has its numbers)."""
from __future__ import annotations

import sys

from daemon_helpers import ROOT, rmtree, short_dir

sys.path.insert(0, str(ROOT / "bench"))


def test_bounded_soak():
    import soak
    state = short_dir("soak")
    try:
        # 16 refits, however slow a loaded machine makes them (at most 5 minutes)
        out = soak.soak(300.0, 0.5, 5.0, state, max_refits=16)
    finally:
        rmtree(state)
    print(out)
    assert out["torn_results"] == 0 and out["failed_in_results"] == 0 and out["failed_inferences"] == 0
    assert out["results_checked"] > 1000
    applied = sum(v["ok"] for v in out["applies"].values())
    assert applied == 16 and all(v["failed"] == 0 for v in out["applies"].values()), out["applies"]
    assert out["applies"]["cli"]["ok"] and out["applies"]["file"]["ok"]
    assert out["fds"]["last"] - out["fds"]["first"] <= 2, out["fds"]
    # a control-socket connection (our own status calls) may hold one thread at a sample
    assert abs(out["threads"]["last"] - out["threads"]["first"]) <= 1, out["threads"]
    assert out["serving_version"] == out["last_version_sent"] and out["exit_code"] == 0
    # retention: 5 versions of 36-byte kernels, 20 drop-folder entries of ~1 KiB each
    assert out["store_bytes"]["max"] < 64 << 10 and out["drop_folder_bytes"]["max"] < 64 << 10
