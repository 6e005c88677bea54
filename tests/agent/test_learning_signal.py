"""What the learner optimises, against numbers derived by hand from the papers' equations (not from the code).

MiniMax-M1 (arXiv 2506.13585) section 3.1: J = 1/sum_i|o_i| sum_i sum_t sg(clip(r_it, 1-eps_low, 1+eps_high)) A_i
log pi(o_it); DAPO (arXiv 2503.14476): min(r A, clip(r, 1-0.2, 1+0.28) A), token-level; GRPO (arXiv 2402.03300):
1/G sum_i 1/|o_i| sum_t min(r A, clip(r, 0.8, 1.2) A). The learner is driven end to end (``TrainBatch`` ->
``Learner.step``) on a unigram policy, log p(k) = log softmax(theta / T)_k, whose gradient is by hand:
d log p(k) / d theta = (e_k - p) / T. With theta = 0 over 4 tokens, p = 1/4 and log p = -ln 4 everywhere.

The hand batch (policy tokens only; position 0 of a row is never a policy token, it has no conditional):
  row 0, A = +1: token 1 sampled with p_old = 1/8 (r = 2), token 2 with p_old = 1/4 (r = 1)
  row 1, A = -1: token 3 sampled with p_old = 1/2 (r = 1/2)
"""

from __future__ import annotations

import math

import pytest
import torch
from lightswe.agent.advantages import AdvantageConfig
from lightswe.agent.chat import Conversation
from lightswe.agent.cispo import CISPOLoss, DAPOLoss, GRPOLoss, LossConfig
from lightswe.agent.learner import Learner, LearnerConfig, TrainBatch, sequence_logprobs
from lightswe.agent.train_step import batch_from, step_advantages
from lightswe.agent.trajectory import EpisodeStatus, Message, Trajectory
from torch import nn

LN = math.log


class Unigram(nn.Module):
    """log p(token) = log softmax(theta / T)[token], whatever came before; [N, T-1] next-token log-probs."""

    def __init__(self, theta: list[float]) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(theta, dtype=torch.float32))

    def token_logprobs(self, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return torch.log_softmax(self.theta / temperature, dim=0)[input_ids[:, 1:]]


def _hand_batch() -> TrainBatch:
    # row 0: [0, 1, 2] policy tokens at 1, 2; row 1: [3, 3] policy token at 1 (right-padded to length 3)
    return TrainBatch.from_sequences([[0, 1, 2], [3, 3]], [[0, 1, 1], [0, 1]],
                                     [[0.0, LN(1 / 8), LN(1 / 4)], [0.0, LN(1 / 2)]], [1.0, -1.0])


def _grad(loss, micro_batch_size: int, **learner) -> tuple[torch.Tensor, dict, Unigram]:
    model = Unigram([0.0] * 4)
    cfg = LearnerConfig(lr=1e-2, eps=1e-12, minibatches=1, micro_batch_size=micro_batch_size, grad_clip=0.0,
                        **learner)
    metrics = Learner(model, loss, cfg).step(_hand_batch())
    return model.theta.grad.clone(), metrics, model  # the mini-batch's accumulated gradient stays in .grad


# CISPO (eps_high 0.28, no lower bound): weights 1.28, 1, 0.5; loss = -(1/3)(1.28 g1 + g2 - 0.5 g3) with
# g_k = e_k - 1/4, so dL/dtheta = -(1/3)(1.28 e1 + e2 - 0.5 e3 - 1.78/4).
CISPO_GRAD = [0.445 / 3, -0.835 / 3, -0.555 / 3, 0.945 / 3]
CISPO_LOSS = 1.78 * LN(4) / 3
# DAPO (0.2 / 0.28): token 1 (A > 0, r = 2 > 1.28) and token 3 (A < 0, r = 0.5 < 0.8) sit on the constant side of
# the min: only token 2 (r = 1) has a gradient, r A / 3 tokens: -(1/3)(e2 - 1/4).
DAPO_GRAD = [1 / 12, 1 / 12, -3 / 12, 1 / 12]
# GRPO (0.2 / 0.2, per sequence then over sequences): token 2 weighs 1/(2 tokens x 2 sequences) = 1/4, tokens 1
# and 3 are clipped: -(1/4)(e2 - 1/4).
GRPO_GRAD = [1 / 16, 1 / 16, -3 / 16, 1 / 16]


@pytest.mark.parametrize("micro_batch_size", [1, 2], ids=["micro-1", "one-batch"])
@pytest.mark.parametrize("name, loss, grad", [
    ("cispo", CISPOLoss(LossConfig(eps_high=0.28)), CISPO_GRAD),
    ("dapo", DAPOLoss(), DAPO_GRAD),
    ("grpo", GRPOLoss(), GRPO_GRAD),
], ids=["cispo", "dapo", "grpo"])
def test_learner_gradient_equals_the_hand_derived_objective(name, loss, grad, micro_batch_size):
    """The whole chain, TrainBatch -> micro-batches -> behaviour log-probs at the token's own position -> loss ->
    accumulated gradient, gives the paper's gradient; the sampler log-prob of token t is compared with the
    learner's log p(token t | < t) (an off-by-one would give ratios 1/2, 1 or 2 elsewhere and other weights)."""
    got, metrics, _ = _grad(loss, micro_batch_size)
    torch.testing.assert_close(got, torch.tensor(grad), rtol=1e-6, atol=1e-7)
    assert metrics["policy_tokens"] == 3.0
    assert metrics["ratio_mean"] == pytest.approx((2 + 1 + 0.5) / 3, rel=1e-6)
    assert metrics["clip_fraction"] == pytest.approx({"cispo": 1 / 3, "dapo": 2 / 3, "grpo": 2 / 3}[name])
    if name == "cispo":
        assert metrics["loss"] == pytest.approx(CISPO_LOSS, rel=1e-6)


def test_cispo_lower_bound_and_token_mask_by_hand():
    """eps_low 0.2: token 3's weight 0.5 becomes 0.8 (coefficient sum 1.28 + 1 - 0.8 = 1.48). The paper's token
    mask M_t drops token 1 (A > 0, r = 2 > 1.28) and, with the lower bound, token 3 (A < 0, r < 0.8)."""
    got, _, _ = _grad(CISPOLoss(LossConfig(eps_high=0.28, eps_low=0.2)), 2)
    torch.testing.assert_close(got, -torch.tensor([-0.37, 1.28 - 0.37, 1 - 0.37, -0.8 - 0.37]) / 3)
    masked, _, _ = _grad(CISPOLoss(LossConfig(eps_high=0.28, eps_low=0.2, token_mask=True)), 2)
    torch.testing.assert_close(masked, -torch.tensor([-0.25, -0.25, 0.75, -0.25]) / 3)
    no_lower, _, _ = _grad(CISPOLoss(LossConfig(eps_high=0.28, token_mask=True)), 1)  # no lower bound: 3 stays
    torch.testing.assert_close(no_lower, -torch.tensor([-0.125, -0.125, 0.875, -0.625]) / 3)


def test_cispo_defaults_are_the_papers_shape():
    """No lower bound on the IS weight (M1: 'we did not impose a lower bound'), an upper one (2.0 here: the paper
    tunes eps_high and gives no value, README); DAPO's clip-higher 0.2 / 0.28 and GRPO's symmetric 0.2."""
    assert CISPOLoss().clip_bounds() == (0.0, 3.0) and CISPOLoss().eps_low is None
    assert DAPOLoss().clip_bounds() == (0.8, 1.28) and GRPOLoss().clip_bounds() == (0.8, 1.2)


def test_first_adamw_step_moves_each_logit_against_its_gradient_sign():
    """Adam's first step is lr * m_hat / (sqrt(v_hat) + eps) = lr * g / |g|: each logit moves by lr against the
    sign of the hand gradient (the update uses the gradient above, nothing else)."""
    _, _, model = _grad(CISPOLoss(LossConfig(eps_high=0.28)), 1)
    expected = -1e-2 * torch.sign(torch.tensor(CISPO_GRAD))
    torch.testing.assert_close(model.theta.detach(), expected, rtol=1e-5, atol=1e-8)


def test_learner_trains_the_tempered_distribution_the_sampler_drew_from():
    """theta = (2 ln 2, 0, 0, 0) at T = 2: softmax(theta / 2) = (2/5, 1/5, 1/5, 1/5), the sampler's log-probs. At
    T = 1 the learner would see p(0) = 4/7 and ratio 10/7 on token 0."""
    theta = [2 * LN(2), 0.0, 0.0, 0.0]
    batch = TrainBatch.from_sequences([[1, 0, 2]], [[0, 1, 1]], [[0.0, LN(2 / 5), LN(1 / 5)]], [1.0])
    for temperature, ratio in ((2.0, 1.0), (1.0, (4 / 7 / (2 / 5) + (1 / 7) / (1 / 5)) / 2)):
        learner = Learner(Unigram(theta), CISPOLoss(), LearnerConfig(minibatches=1, temperature=temperature))
        assert learner.step(batch)["ratio_mean"] == pytest.approx(ratio, rel=1e-6)


def test_a_group_whose_rewards_are_equal_gives_no_gradient_but_counts_in_the_normaliser():
    """Adding a zero-advantage row (an equal-reward group kept, the embedded run's setting) leaves the direction
    and scales the gradient by 3 / (3 + its tokens): sum over all tokens of the batch / all tokens."""
    model = Unigram([0.0] * 4)
    batch = TrainBatch.from_sequences([[0, 1, 2], [3, 3], [0, 0, 0]], [[0, 1, 1], [0, 1], [0, 1, 1]],
                                      [[0.0, LN(1 / 8), LN(1 / 4)], [0.0, LN(1 / 2)], [0.0, LN(1 / 4), LN(1 / 4)]],
                                      [1.0, -1.0, 0.0])
    Learner(model, CISPOLoss(LossConfig(eps_high=0.28)), LearnerConfig(minibatches=1, grad_clip=0.0)).step(batch)
    torch.testing.assert_close(model.theta.grad, torch.tensor(CISPO_GRAD) * 3 / 5)


# ------------------------------------------------------------------------------------------ advantages


def _episode(group: str, i: int, reward: float | None, *, status=EpisodeStatus.SUBMITTED, finish="stop") -> Trajectory:
    return Trajectory(episode_id=f"{group}/{i}", task_id=group.split("@")[0], group_id=group, sample_index=i,
                      token_ids=[7, 8, 9 + i], loss_mask=[0, 1, 1], logprobs=[0.0, -0.5, -0.5], reward=reward,
                      status=status, messages=[Message(role="assistant", content="x", start=1, end=3,
                                                       finish_reason=finish)])


def _mixed_step() -> list[Trajectory]:
    """Two tasks' groups interleaved as episodes finish, a sandbox failure (reward None), a truncated run, a group
    of equal rewards and a task with a single graded run."""
    return [_episode("a@1", 0, 1.0), _episode("b@1", 0, 0.0), _episode("a@1", 1, 0.0),
            _episode("c@1", 0, 1.0), _episode("a@1", 2, None, status=EpisodeStatus.SANDBOX_ERROR),
            _episode("b@1", 1, 0.0), _episode("a@1", 3, 1.0), _episode("a@1", 4, 0.0, finish="length"),
            _episode("c@1", 1, None, status=EpisodeStatus.SANDBOX_ERROR),
            _episode("a@1", 5, 0.0, status=EpisodeStatus.STEP_LIMIT)]


@pytest.mark.parametrize("scale_by_std, a_values", [
    # group a's graded, untruncated rewards: 1, 0, 1, 0 (the step-limit run is a real failure): mean 1/2
    (False, [0.5, -0.5, 0.5, -0.5]),
    # population std 1/2: (r - 1/2) / (1/2 + 1e-6)
    (True, [0.5 / (0.5 + 1e-6), -0.5 / (0.5 + 1e-6), 0.5 / (0.5 + 1e-6), -0.5 / (0.5 + 1e-6)]),
], ids=["mean-centred", "std-scaled"])
def test_group_advantages_of_a_mixed_step_by_hand(scale_by_std, a_values):
    trajs = _mixed_step()
    adv = step_advantages(trajs, AdvantageConfig(scale_by_std=scale_by_std, filter_equal=False), overlong_filter=True)
    # a: rows 0, 2, 6, 9 get a_values; the sandbox failure (4) and the truncated run (7) are out, not scored 0
    # (scored 0 they would make the mean 1/3); b: equal rewards, kept with 0; c: one graded run, kept with 0
    expected = {0: a_values[0], 2: a_values[1], 6: a_values[2], 9: a_values[3], 1: 0.0, 5: 0.0, 3: 0.0}
    assert adv.keep == [i in expected for i in range(10)]
    assert adv.values == pytest.approx([expected.get(i, 0.0) for i in range(10)], abs=1e-12)
    assert (adv.groups, adv.groups_filtered, adv.runs_failed) == (3, 2, 3)
    kept = [i for i, k in enumerate(adv.keep) if k]
    batch = batch_from([trajs[i] for i in kept], [adv.values[i] for i in kept])
    # rows sorted by group, each row's advantage still its own episode's (token 9 + sample index marks it)
    rows = [(trajs[i].group_id, trajs[i].token_ids[-1]) for i in kept]
    order = sorted(range(len(rows)), key=lambda j: rows[j][0])
    assert batch.input_ids[:, -1].tolist() == [rows[j][1] for j in order]
    assert batch.advantages.tolist() == pytest.approx([adv.values[kept[j]] for j in order])
    assert batch.groups.tolist() == [0, 0, 0, 0, 1, 1, 2]


def test_filtering_drops_groups_without_signal_and_single_runs():
    adv = step_advantages(_mixed_step(), AdvantageConfig(filter_equal=True, scale_by_std=False), overlong_filter=True)
    assert [i for i, k in enumerate(adv.keep) if k] == [0, 2, 6, 9]
    kept = step_advantages(_mixed_step(), AdvantageConfig(filter_equal=False, scale_by_std=False),
                           overlong_filter=False)
    # without overlong filtering the truncated failure counts: a's rewards 1, 0, 1, 0, 0 -> mean 2/5
    assert kept.values[7] == pytest.approx(-0.4) and kept.values[0] == pytest.approx(0.6)


# ------------------------------------------------------------------------- token-exact multi-turn episodes


def test_multi_turn_episode_trains_on_exactly_the_sampled_tokens_and_their_log_probs():
    """Two assistant turns sampled by the real tiny model (T = 0.7), a tool observation between them, glued in
    token space; batched with a shorter episode (right padding). The learner's log p(token t | < t) at the mask
    equals the sampler's log-prob of that very token, the mask is 1 exactly on the sampled tokens, and shifting
    the alignment by one position breaks the match (the check can see an off-by-one)."""
    from lightswe.agent.policies.base import SamplingParams
    from lightswe.agent.policies.model import ModelPolicy
    from lightswe.model import ByteTokenizer, MiniMaxConfig, MiniMaxForCausalLM

    torch.manual_seed(0)
    model = MiniMaxForCausalLM(MiniMaxConfig.preset("tiny"))
    model.init_weights(seed=3)
    tok = ByteTokenizer()
    policy = ModelPolicy(model, batch_invariant=True)
    convs, sampled = [], []
    for turns, seed in ((2, 11), (1, 12)):
        conv = Conversation(tok)
        conv.add("system", "sys")
        conv.add("user", "fix f")
        for k in range(turns):
            if k:
                conv.add("tool", "ok: 1 passed <|im_end|>")  # observation text stays data
            start = len(conv.start_assistant())
            params = SamplingParams(max_new_tokens=12, temperature=0.7, stop_token_ids=conv.stop_token_ids,
                                    seed=seed + k)
            tokens, logprobs = policy.generate(conv.token_ids, params)
            conv.add_generated(tokens, logprobs)
            assert conv.token_ids[start:start + len(tokens)] == tokens
            sampled.append((len(convs), start, tokens, logprobs))
        convs.append(conv)
    batch = TrainBatch.from_sequences([c.token_ids for c in convs], [c.loss_mask for c in convs],
                                      [c.logprobs for c in convs], [1.0, -1.0])
    expected_mask = torch.zeros_like(batch.mask)
    for row, start, tokens, _ in sampled:
        expected_mask[row, start:start + len(tokens)] = True
    assert torch.equal(batch.mask, expected_mask)
    with torch.no_grad():
        logp, _ = sequence_logprobs(model, batch.input_ids, temperature=0.7)
    for row, start, tokens, logprobs in sampled:
        torch.testing.assert_close(logp[row, start:start + len(tokens)], torch.tensor(logprobs), atol=2e-5, rtol=0)
    mask = batch.mask
    assert (logp[mask] - batch.sampler_logp[mask]).abs().max() < 2e-5
    shifted = (logp[:, 1:][mask[:, :-1]] - batch.sampler_logp[:, :-1][mask[:, :-1]]).abs().max()
    assert shifted > 1e-2
    metrics = Learner(model, CISPOLoss(), LearnerConfig(minibatches=1, temperature=0.7, lr=1e-9)).step(batch)
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-4) and metrics["clip_fraction"] == 0.0


# ------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize("field, value, message", [
    ("eps_high", 0.0, r"--loss-config.eps-high 0.0: must be > 0"),
    ("eps_low", 1.0, r"--loss-config.eps-low 1.0: must be in \[0, 1\)"),
    ("eps_low", -0.1, r"--loss-config.eps-low -0.1: must be in \[0, 1\)"),
])
def test_a_clip_range_the_loss_refuses_is_refused_with_the_settings(field, value, message):
    """Checked with the other settings, before the run folder and the warm start (the loss itself would raise a
    ValueError only when the learner is built, after minutes of warm start)."""
    from lightswe.agent.train_config import TrainConfig
    from lightswe.errors import UserInputError

    with pytest.raises(UserInputError, match=message):
        TrainConfig(loss_config=LossConfig(**{field: value}))
    TrainConfig(loss_config=LossConfig(eps_high=0.5, eps_low=0.0))  # the edges the losses accept


# ---------------------------------------------------------------------------------------------- resume


def test_a_resumed_run_logs_each_step_once(tmp_path):
    """A run stopped after logging step 3 but before its checkpoint (e.g. Ctrl-C in the held-out evaluation that
    follows the step's row) resumes from step 2 and runs step 3 again: its metrics (JSONL and TensorBoard) must
    then hold step 3 once, as an uninterrupted run's do, not the stale row beside the new one."""
    from lightswe.agent.metrics import MetricsLog, read_metrics
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLog(tmp_path)
    for step in (1, 2, 3):
        log.write(step=step, metrics={"loss": float(step)})
    log.close()
    log = MetricsLog(tmp_path, purge_step=3)  # resuming from the checkpoint of step 2
    log.write(step=3, metrics={"loss": 30.0})
    log.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 2.0), (3, 30.0)]


# ------------------------------------------------------------------------------------- the learner's step


def _groups_batch(advantages: list[float]) -> TrainBatch:
    """One two-token row per advantage, rows i and i + 1 a group (2 rows each)."""
    rows = len(advantages)
    return TrainBatch.from_sequences([[0, 1 + i % 3] for i in range(rows)], [[0, 1]] * rows,
                                     [[0.0, LN(1 / 4)]] * rows, advantages, group_ids=[i // 2 for i in range(rows)])


def test_a_minibatch_without_signal_takes_no_optimiser_step():
    """With mini-batches cut at group boundaries, a mini-batch can hold only equal-reward groups (advantage 0; in
    the embedded default run: step 7's first mini-batch, every seed-0 run). Its policy gradient is exactly zero,
    and an AdamW step on it would only replay the momentum of earlier updates (what the loop already refuses
    for a step without signal). So: no step, and the parameters end where the signal mini-batch alone puts them."""
    cfg = LearnerConfig(lr=1e-2, minibatches=2, micro_batch_size=2, grad_clip=0.0)
    loss = CISPOLoss()
    warm = _groups_batch([1.0, -1.0, 0.5, -0.5])  # momentum from an earlier update

    def run(batch: TrainBatch) -> tuple[torch.Tensor, dict]:
        model = Unigram([0.0] * 4)
        learner = Learner(model, loss, cfg)
        learner.step(warm)
        metrics = learner.step(batch)
        return model.theta.detach().clone(), metrics | {"updates": learner.updates}

    zero_then_signal, metrics = run(_groups_batch([0.0, 0.0, 1.0, -1.0]))
    assert metrics["optimizer_steps"] == 1.0 and metrics["updates"] == 3
    # the signal group alone (rows 2 and 3: tokens 3 and 1), one group: one mini-batch, one step
    signal_only, _ = run(TrainBatch.from_sequences([[0, 3], [0, 1]], [[0, 1]] * 2, [[0.0, LN(1 / 4)]] * 2,
                                                   [1.0, -1.0], group_ids=[1, 1]))
    torch.testing.assert_close(zero_then_signal, signal_only, rtol=0, atol=0)
    model = Unigram([0.0] * 4)
    learner = Learner(model, loss, cfg)
    learner.step(warm)
    after_warm = model.theta.detach().clone()
    metrics = learner.step(_groups_batch([0.0, 0.0, 0.0, 0.0]))
    assert metrics["optimizer_steps"] == 0.0 and learner.updates == 2 and torch.equal(model.theta.detach(), after_warm)


@pytest.mark.docker
def test_a_run_stopped_in_its_final_evaluation_resumes_into_it(tmp_path, monkeypatch):
    """Stopped (Ctrl-C) during the held-out evaluation after the last step, the rerun must evaluate the final
    weights and log every step once, as an uninterrupted run does. The last step's checkpoint used to be written
    before that evaluation: the rerun then found the run finished and never evaluated it, and its summary named
    step 0's held-out score as the last one."""
    from lightswe.agent import train as train_module
    from lightswe.agent.metrics import read_metrics
    from lightswe.agent.sampling import SamplerConfig
    from lightswe.agent.task_stream import TaskStreamConfig
    from lightswe.agent.train import TrainConfig, WarmStartConfig, train

    cfg = TrainConfig(out_dir=str(tmp_path / "run"), steps=2, tasks_per_step=1, group_size=2, eval_group_size=1,
                      eval_every=0, progress=False, sampler=SamplerConfig(concurrency=2),
                      data=TaskStreamConfig(eval_tasks="arith:eval:sum"), warm_start=WarmStartConfig(steps=0))
    evaluate_step = train_module.evaluate_step

    def stopped_at_the_end(cfg, ctx, rollouts, eval_tasks, out, step):
        if step == cfg.steps:
            raise KeyboardInterrupt
        return evaluate_step(cfg, ctx, rollouts, eval_tasks, out, step)

    monkeypatch.setattr(train_module, "evaluate_step", stopped_at_the_end)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(train_module, "evaluate_step", evaluate_step)
    summary = train(cfg)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [(r["step"], "eval_success_rate" in r) for r in rows] == [(0, True), (1, False), (2, False), (2, True)]
    assert summary["eval_success_rate_last"] == rows[-1]["eval_success_rate"]


# ------------------------------------------------------------------ DAPO's soft overlong punishment (section 3.4)
# eq. 13 of arXiv 2503.14476 with L_max = 8, L_cache = 4 (expected length 4): R_length = 0 up to 4 tokens, then
# (4 - |y|) / 4 up to 8 (-1/4 at 5, -1/2 at 6, -1 at 8), -1 beyond.


def _sized(group: str, i: int, reward: float | None, generated: int, *, status=EpisodeStatus.SUBMITTED,
           finish="stop") -> Trajectory:
    """An episode whose policy generated ``generated`` tokens (its mask), after a one-token prompt."""
    n = generated + 1
    return Trajectory(episode_id=f"{group}/{i}", task_id=group.split("@")[0], group_id=group, sample_index=i,
                      token_ids=[7] * n, loss_mask=[0] + [1] * generated, logprobs=[0.0] + [-0.5] * generated,
                      reward=reward, status=status,
                      messages=[Message(role="assistant", content="x", start=1, end=n, finish_reason=finish)])


def test_overlong_penalty_is_the_papers_piecewise_linear_ramp():
    from lightswe.agent.advantages import overlong_penalty

    got = [overlong_penalty(n, max_tokens=8, buffer_tokens=4) for n in (0, 4, 5, 6, 7, 8, 9, 100)]
    assert got == pytest.approx([0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0])
    assert overlong_penalty(6, max_tokens=8, buffer_tokens=4, factor=0.5) == pytest.approx(-0.25)
    assert overlong_penalty(10**6, max_tokens=8, buffer_tokens=0) == 0.0  # off
    with pytest.raises(ValueError, match="buffer_tokens"):
        overlong_penalty(1, max_tokens=8, buffer_tokens=9)


def test_soft_overlong_punishment_shapes_the_reward_before_the_advantages():
    from lightswe.agent.advantages import OverlongConfig
    from lightswe.agent.train_step import overlong_metric, shaped_rewards

    trajs = [_sized("a@1", 0, 1.0, 3), _sized("a@1", 1, 1.0, 6), _sized("a@1", 2, 0.0, 8),
             _sized("a@1", 3, None, 8, status=EpisodeStatus.SANDBOX_ERROR),  # never shaped, never scored
             _sized("a@1", 4, 0.0, 8, finish="length"),  # truncated: the overlong filter leaves it out
             _sized("b@1", 0, 1.0, 3), _sized("b@1", 1, 1.0, 7)]
    on = OverlongConfig(buffer_tokens=4, max_tokens=8)
    # shaped: a: 1, 1 - 1/2, 0 - 1, None, 0 - 1; b: 1, 1 - 3/4
    assert shaped_rewards(trajs, on) == pytest.approx([1.0, 0.5, -1.0, None, -1.0, 1.0, 0.25])
    cfg = AdvantageConfig(scale_by_std=False, filter_equal=True)
    adv = step_advantages(trajs, cfg, overlong_filter=True, overlong=on)
    # a (filtered: runs 3, 4 out): mean of 1, 1/2, -1 = 1/6; b: equal correctness, now different rewards: mean 5/8
    assert adv.values == pytest.approx([5 / 6, 1 / 3, -7 / 6, 0.0, 0.0, 3 / 8, -3 / 8])
    assert adv.keep == [True, True, True, False, False, True, True]
    # without the filter the truncated run counts with its shaped -1: a's mean (1 + 1/2 - 1 - 1) / 4 = -1/8
    unfiltered = step_advantages(trajs, cfg, overlong_filter=False, overlong=on)
    assert unfiltered.values[:5] == pytest.approx([9 / 8, 5 / 8, -7 / 8, 0.0, -7 / 8])
    # L_max from the caller (the episode's budget) when the config leaves it unset; the factor scales it
    assert shaped_rewards(trajs, OverlongConfig(buffer_tokens=4, factor=2.0), 8)[1] == pytest.approx(0.0)
    # the logged metric: mean penalty over the graded runs (0, -1/2, -1, -1, 0, -3/4) / 6
    assert overlong_metric(trajs, on) == pytest.approx(-3.25 / 6)
    # off (the default): the rewards and advantages of before, bit for bit; b then carries no signal
    for off in (None, OverlongConfig(), OverlongConfig(max_tokens=8)):
        same = step_advantages(trajs, cfg, overlong_filter=True, overlong=off)
        assert same.values == step_advantages(trajs, cfg, overlong_filter=True).values
        assert same.keep[5:] == [False, False]


def test_overlong_settings_are_checked_and_default_to_the_episode_budget(tmp_path):
    from lightswe.agent.advantages import OverlongConfig
    from lightswe.agent.train_cli import parse_train
    from lightswe.agent.train_config import TrainConfig
    from lightswe.errors import UserInputError

    cfg = TrainConfig(out_dir=str(tmp_path))
    assert cfg.overlong.buffer_tokens == 0  # off by default: the default run's numbers do not change
    a = cfg.agent
    assert cfg.overlong_max_tokens() == min(a.max_context_tokens, a.max_steps * a.max_new_tokens)
    parsed, _ = parse_train(["--out", str(tmp_path), "--overlong.buffer-tokens", "64", "--overlong.factor", "0.5"])
    assert (parsed.overlong.buffer_tokens, parsed.overlong.factor) == (64, 0.5)
    for bad, option in ((OverlongConfig(buffer_tokens=-1), "--overlong.buffer-tokens"),
                        (OverlongConfig(buffer_tokens=10**6), "--overlong.buffer-tokens"),
                        (OverlongConfig(max_tokens=0), "--overlong.max-tokens"),
                        (OverlongConfig(buffer_tokens=4, factor=-1.0), "--overlong.factor")):
        with pytest.raises(UserInputError, match=option):
            TrainConfig(out_dir=str(tmp_path), overlong=bad)
