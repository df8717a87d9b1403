"""Run-queue delay as `explain` shows it (issue 15): evidence shown in a transaction's timeline
that is not part of it says so; a run-queue sentence names the thread by its id and name, the
CPU, and the other side's thread when it was delayed in the same transaction too.

tests/data/cpu-contention: the client thread 23671 and the server thread 23664 (both `python`)
were made to wait ~150 ms for CPU 1; transaction 1075 had both wait, 1073 (fast) ended just
before the server's wait began, 1 started just after transaction 0's reset."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from analysis import analyse
from analysis.timeline import explain_transaction
from common.rundir import RunDir

DATA = Path(__file__).resolve().parents[1] / "data" / "cpu-contention"


def kernel_rows(txn_id):
    return [r["text"] for r in explain_transaction(RunDir.open(DATA), txn_id).rows
            if r["column"] == "kernel"]


def test_a_fast_transaction_says_the_run_queue_delay_shown_is_outside_it():
    rows = kernel_rows(1073)
    assert len(rows) == 1 and rows[0].startswith("thread 23664 (python) runnable but not running")
    assert "outside this transaction: it began" in rows[0] and "after this transaction ended" in rows[0]


def test_another_connections_event_names_its_transaction():
    (row,) = kernel_rows(1)
    assert "outside this transaction: it ended" in row and "belongs to transaction 0" in row


def test_a_transactions_own_evidence_is_not_marked_outside():
    for txn_id in (0, 1075):
        assert not any("outside" in r for r in kernel_rows(txn_id))


def test_run_queue_sentence_names_thread_cpu_and_the_other_side():
    expl = analyse(RunDir.open(DATA)).explanations.set_index("txn_id")
    both = expl.loc[1075, "sentence"]
    assert both.startswith("The client thread 23671 (python) waited 150 ms runnable but not running "
                           "until +151 ms (another task had the CPU; it then ran on CPU 1).")
    assert "The other side was delayed too: the server thread 23664 (python) waited 150 ms" in both
    alone = expl.loc[0, "sentence"]
    assert "other side" not in alone
    assert not any(" pid " in s for s in expl["sentence"])


def test_explain_command_prints_the_note():
    from spiketrace.cli import cli

    res = CliRunner().invoke(cli, ["explain", str(DATA), "1073"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "outside this transaction" in res.output and "Not a spike" in res.output


def test_run_queue_sentence_names_the_thread_that_had_the_cpu():
    from analysis.causes_transfer import runq_sentences

    (text,) = runq_sentences([7], ["server"], [4123], ["postgres"], [1], [150_000_000], [151_000_000],
                             holder=[555], names={555: "hog"})
    assert "(thread 555 (hog) had the CPU when it got it; it then ran on CPU 1)" in text
    (text,) = runq_sentences([7], ["server"], [4123], ["postgres"], [1], [150_000_000], [151_000_000],
                             holder=[556], names={})
    assert "(thread 556 had the CPU when it got it;" in text
