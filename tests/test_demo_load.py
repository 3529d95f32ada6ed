"""Load test of the web demo (``scripts/load_test_demo.py``): rounds of 16 users with good photos, 4 with bad
parameters and 4 with bad files at once, with an upload budget smaller than a round. No good request fails
(an upload that does not fit is refused with 503 and succeeds when sent again), every bad one gets its own
error, the server stays up, its memory stays within a bound after the warm-up rounds, and the upload folder
stays within its budget and empties once the uploads go unused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import DATA, REPO, free_port, require

pytest.importorskip("gradio", reason="the web demo needs gradio: pip install -e '.[demo]'")


pytestmark = pytest.mark.slow  # rounds of users against a running demo


def test_rounds_of_good_and_bad_users_fail_no_good_request_and_grow_nothing():
    require(DATA / "flickr8k" / "photos_fullres")
    budget_mb, rounds = 2, 7  # a round uploads about 3 MB: some uploads must wait for room
    command = [sys.executable, str(REPO / "scripts" / "load_test_demo.py"), "--rounds", str(rounds),
               "--warm-up", "3", "--keep-uploads", "2", "--uploads-budget-mb", str(budget_mb),
               "--port", str(free_port())]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO,
                          env={**os.environ, "CAPTION_DATA": str(DATA), "PYTHONPATH": str(REPO)})
    print(done.stdout)
    summary = json.loads(done.stdout.split("SUMMARY ", 1)[1])
    assert summary["failures"] == [] and done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert summary["alive"] and summary["rounds"] == rounds
    for row in summary["rows"]:
        assert (row["good_ok"], row["parameter_ok"], row["file_ok"]) == (16, 4, 4), row
    # A loose bound: resident memory steps up by up to ~250 MB when the model meets a new batch shape. That no
    # request's objects outlive it is checked exactly in test_web.py.
    assert summary["rss_growth_after_warm_up_mb"] <= 400
    assert max(row["uploads_mb"] for row in summary["rows"]) <= budget_mb  # never beyond it, under any burst
    assert sum(row["refused"] for row in summary["rows"]) > 0  # a round (~6 MB) does not fit: some waited
    assert summary["files_after_idle"] == 0  # every upload deleted once unused
