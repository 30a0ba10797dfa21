"""Per-row sampling: each row's own temperature, top_p, penalties and seed."""

import torch

from assistant.sampling import RowSampling, RowSettings, row_seed

PROBS = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))


def test_each_row_is_filtered_by_its_own_temperature_and_top_p():
    logits = PROBS.repeat(3, 1)
    out = RowSampling([RowSettings(0.0, 1.0), RowSettings(1.0, 0.5), RowSettings(1.0, 1.0)],
                      prompt_len=0)(torch.zeros(3, 0, dtype=torch.long), logits.clone())
    finite = torch.isfinite(out)
    assert finite.tolist() == [[True, False, False], [True, False, False], [True, True, True]]
    assert torch.allclose(out[2], logits[2])
    hot = RowSampling([RowSettings(2.0, 1.0)], 0)(torch.zeros(1, 0, dtype=torch.long),
                                                   PROBS.clone())
    assert torch.allclose(hot, PROBS / 2)


def test_penalties_follow_openais_definition_on_the_answer_only():
    # Row 0 generated tokens 1, 1, 2 after a prompt of [0, 0]; row 1 has no penalties.
    ids = torch.tensor([[0, 0, 1, 1, 2], [0, 0, 1, 1, 2]])
    settings = [RowSettings(1.0, 1.0, frequency_penalty=0.5, presence_penalty=0.25),
                RowSettings(1.0, 1.0)]
    out = RowSampling(settings, prompt_len=2)(ids, torch.zeros(2, 3))
    # token 0: only in the prompt; token 1: twice (2 * 0.5 + 0.25); token 2: once.
    assert torch.allclose(out[0], torch.tensor([0.0, -1.25, -0.75]))
    assert torch.equal(out[1], torch.zeros(3))


def test_a_seeded_row_draws_from_its_own_generator():
    def draws(settings: RowSettings, steps: int = 20) -> list[int]:
        sampler, picked = RowSampling([settings], 0), []
        for _ in range(steps):
            out = sampler(torch.zeros(1, 0, dtype=torch.long), PROBS.clone())
            assert torch.isfinite(out).sum() == 1         # one token left to pick
            picked.append(int(out.argmax()))
        return picked

    torch.manual_seed(0)
    first = draws(RowSettings(1.0, 1.0, seed=row_seed(5, 0)))
    torch.manual_seed(1)                                   # the global RNG does not matter
    assert draws(RowSettings(1.0, 1.0, seed=row_seed(5, 0))) == first
    assert draws(RowSettings(1.0, 1.0, seed=row_seed(5, 1))) != first
    assert set(first) == {0, 1, 2}                       # still a sample, not the argmax


def test_row_seeds_differ_per_candidate_and_do_not_collide_across_requests():
    assert row_seed(1, 0) == row_seed(1, 0)
    assert len({row_seed(s, k) for s in range(3) for k in range(3)}) == 9


def nucleus_reference(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """transformers' own top-p warper: which tokens it keeps (rows, vocab)."""
    from transformers import TopPLogitsWarper

    out = TopPLogitsWarper(top_p)(torch.zeros(len(scores), 0, dtype=torch.long), scores.clone())
    return torch.isfinite(out)


def test_the_nucleus_matches_transformers_top_p_for_peaked_and_flat_rows():
    # Peaked rows keep a handful of tokens (found among the top candidates); flat rows keep
    # thousands (the search widens up to the whole vocabulary).
    torch.manual_seed(3)
    for scale in (0.5, 3.0, 12.0):
        logits = torch.randn(4, 49152) * scale
        sampler = RowSampling([RowSettings(1.0, 0.9)] * 4, prompt_len=0)
        kept = torch.isfinite(sampler(torch.zeros(4, 0, dtype=torch.long), logits.clone()))
        assert torch.equal(kept, nucleus_reference(logits, 0.9))


def test_choose_picks_within_each_rows_nucleus_without_sorting_the_vocabulary(monkeypatch):
    # Sorting all 49,152 logits of every row cost a sixth of a decode step of 8 rows; a
    # peaked row's nucleus is found among its top candidates instead.
    torch.manual_seed(4)
    logits = torch.randn(6, 49152) * 8
    settings = [RowSettings(0.0, 1.0), RowSettings(0.7, 0.95, seed=row_seed(1, 0)),
                RowSettings(1.0, 0.5), RowSettings(0.7, 0.95), RowSettings(1.3, 0.8, seed=9),
                RowSettings(0.7, 0.95, seed=row_seed(1, 1))]
    sampler = RowSampling(settings, 0)
    kept = [nucleus_reference(logits[i:i + 1] / max(s.temperature, 1e-4), s.top_p)[0]
            for i, s in enumerate(settings)]
    sorts = []
    real_sort = torch.sort
    monkeypatch.setattr(torch, "sort", lambda *a, **k: sorts.append(1) or real_sort(*a, **k))
    for _ in range(20):
        tokens = sampler.choose([[]] * 6, logits)
        assert tokens[0] == int(logits[0].argmax())
        assert all(kept[i][t] for i, t in enumerate(tokens))
    assert not sorts


def test_choose_draws_a_seeded_row_the_same_alone_and_beside_others():
    torch.manual_seed(5)
    logits = torch.randn(3, 49152) * 4
    seeded = RowSettings(0.9, 0.95, seed=row_seed(2, 0))
    alone = RowSampling([seeded], 0)
    together = RowSampling([RowSettings(0.7, 0.9), seeded, RowSettings(0.0, 1.0)], 0)
    draws_alone = [alone.choose([[]], logits[1:2])[0] for _ in range(30)]
    draws_together = [together.choose([[]] * 3, logits)[1] for _ in range(30)]
    assert draws_alone == draws_together and len(set(draws_alone)) > 1


def test_choose_draws_in_proportion_to_the_probabilities():
    sampler = RowSampling([RowSettings(1.0, 1.0, seed=3), RowSettings(1.0, 0.85, seed=4)], 0)
    logits = PROBS.repeat(2, 1)
    counts = torch.zeros(2, 3)
    for _ in range(3000):
        for row, token in enumerate(sampler.choose([[], []], logits)):
            counts[row, token] += 1
    assert torch.allclose(counts[0] / 3000, torch.tensor([0.6, 0.3, 0.1]), atol=0.03)
    # top_p 0.85 keeps the two likeliest (0.6 + 0.3), renormalized to 2/3 and 1/3
    assert torch.allclose(counts[1] / 3000, torch.tensor([2 / 3, 1 / 3, 0.0]), atol=0.03)
