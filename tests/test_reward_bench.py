"""bench/reward_heads.py variants and targets table; bench/reward_hh_growth.py trend."""

import numpy as np
import pytest

from adapters.reward_head import HeadSettings
from bench.reward_heads import parse_variants, targets_table


def test_variants_parse_fields_and_default_to_the_product_settings():
    v = parse_variants("l2=4,prior_strength=0.5;select_prior=true")
    assert v["l2=4,prior_strength=0.5"] == HeadSettings(l2=4.0, prior_strength=0.5)
    assert v["select_prior=true"].select_prior is True
    assert parse_variants("") == {"defaults": HeadSettings()}


def test_unknown_setting_is_refused_by_name():
    with pytest.raises(SystemExit, match="no_such"):
        parse_variants("no_such=1")


def test_targets_table_reports_gain_over_global_and_personal_in_points():
    def user(g, p, pp, ece):
        return {"acc": {"global": [g, 0], "personal": [p, 0], "personal_prior": [pp, 0]},
                "ece": {"global": [ece, 0], "personal": [ece, 0], "personal_prior": [ece, 0]}}

    report = {"results": {
        "hh": {"recipes": {"r": {"summary": {"hh": user(0.6, 0.6, 0.7, 0.02)}}}},
        "relabeled": {"recipes": {"r": {"summary": {"a": user(0.5, 0.6, 0.57, 0.07)}}}}}}
    row = [line for line in targets_table(report, ("personal_prior",)).splitlines()
           if line.startswith("| r |")][0]
    assert "| 0.700 |" in row and "a +7.0 / -3.0" in row and row.endswith("| 0.070 |")


def test_hh_growth_extrapolates_the_log_linear_trend_to_the_target():
    from bench.reward_hh_growth import pairs_for_target

    rising = {n: [0.5 + 0.02 * np.log2(n)] * 2 for n in (60, 120, 240, 480)}
    assert pairs_for_target(rising) == pytest.approx(2 ** 9, rel=1e-6)   # 0.5 + 0.02 * 9
    assert pairs_for_target({60: [0.6], 480: [0.59]}) == float("inf")
