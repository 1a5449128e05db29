"""The rollout simulation (bench/rollout.py): a bad version stops in the first phase, a good one
reaches every till, and the phase draw is uniform as apt's is."""

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from bench.rollout import main, percentile, simulate


def args(**over: object):
    import argparse

    values = dict(bad_start_failures=0.3, bad_degraded=0.2, halt_share=0.05, halt_min=10, soak=240, soak_share=0.9)
    return argparse.Namespace(**{**values, **over})


def test_a_bad_version_is_halted_before_the_second_phase():
    bad = simulate(2000, 3, args(), bad=True)
    assert bad["halted_at_min"] is not None and bad["phase_reached_pct"] == 1
    assert bad["tills_that_took_it"] <= 0.03 * 2000  # the 1 % phase is apt's percentile <= 1: about 2 %


def test_a_good_version_reaches_every_till_phase_by_phase():
    good = simulate(2000, 3, args(), bad=False)
    assert good["halted_at_min"] is None and good["phase_reached_pct"] == 100
    assert good["running_it_at_end"] == 2000 and len(good["hours_to_next_phase"]) == 3
    assert good["restarts_at_a_safe_moment"] + good["restarts_after_the_bound"] == 2000


def test_without_a_halt_rule_the_bad_version_spreads():
    spread = simulate(2000, 3, args(halt_share=1.0, soak_share=0.5), bad=True)  # never halts
    assert spread["halted_at_min"] is None and spread["tills_that_took_it"] > 0.5 * 2000


@given(st.text(min_size=1, max_size=40))
@settings(max_examples=30)
def test_a_percentile_is_always_in_apts_range(machine_id):
    assert 0 <= percentile("tillplug", "0.2.1", machine_id) <= 100


def test_percentiles_are_spread_evenly():
    counts = Counter(percentile("tillplug", "0.2.1", f"{n:032x}") // 10 for n in range(5000))
    assert min(counts[d] for d in range(10)) > 400  # each tenth of the range holds about 495


def test_the_command_prints_one_json_line_last(capsys):
    assert main(["--tills", "500"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith('{"good": ')
