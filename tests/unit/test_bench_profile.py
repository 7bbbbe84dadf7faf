"""Ranking py-spy's collapsed stacks (``rentahal bench overhead --py-spy``)."""

from __future__ import annotations

from rentahal.bench.profile import rank, summary

STACKS = "\n".join(
    [
        "run (uvicorn/main.py:10);Runner.run (asyncio/runners.py:118);"
        "submit (/x/src/rentahal/broker.py:40);_write (rentahal/storage/ledger.py:9) 6",
        "run (uvicorn/main.py:10);Runner.run (asyncio/runners.py:118);"
        "submit (/x/src/rentahal/broker.py:41) 2",
        "run (uvicorn/main.py:10);Runner.run (asyncio/runners.py:118) 2",
        "garbage line",
    ]
)


def test_rank_merges_lines_of_one_function_and_counts_self_and_total() -> None:
    samples, shares = rank(STACKS)
    assert samples == 10
    by_frame = {s.frame: s for s in shares}
    submit = by_frame["submit (rentahal/broker.py)"]  # two lines of one function, path shortened
    assert (submit.total_pct, submit.self_pct) == (80.0, 20.0)
    assert by_frame["_write (rentahal/storage/ledger.py)"].self_pct == 60.0
    assert by_frame["Runner.run (asyncio/runners.py)"].total_pct == 100.0
    assert shares[0].total_pct >= shares[-1].total_pct


def test_summary_leaves_out_entry_frames_that_do_no_work() -> None:
    text = summary(STACKS)
    assert text.startswith("10 samples")
    inclusive = text.split("frame (by self)")[0]
    assert "uvicorn/main.py" not in inclusive
    assert "submit (rentahal/broker.py)" in inclusive


def test_rank_of_nothing() -> None:
    assert rank("") == (0, [])
