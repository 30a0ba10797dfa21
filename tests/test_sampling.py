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
