"""User encoder, next-event heads and Perceiver: shapes, padding, causality, no NaN, losses."""

from __future__ import annotations

import io
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from userllm.encoder import EncoderConfig, NextEventHeads, PerceiverResampler, UserEncoder

VOCAB = {"item": 20, "rating": 7, "category": 5}
FUSIONS = ["early", "sum", "late"]


def make_config(**overrides) -> EncoderConfig:
    kwargs = dict(vocab_sizes=VOCAB, features=list(VOCAB), dim=16, layers=2, heads=2, dropout=0.0, max_len=12)
    return EncoderConfig(**{**kwargs, **overrides})


def make_encoder(fusion: str, **overrides) -> UserEncoder:
    torch.manual_seed(0)
    return UserEncoder(make_config(fusion=fusion, **overrides)).eval()


def padded(lengths: list[int], L: int, left: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Random events padded to L on the left or the right: the same events on both sides."""
    g = torch.Generator().manual_seed(0)
    features = {f: torch.zeros(len(lengths), L, dtype=torch.long) for f in VOCAB}
    mask = torch.zeros(len(lengths), L, dtype=torch.bool)
    for row, n in enumerate(lengths):
        span = slice(L - n, L) if left else slice(0, n)
        mask[row, span] = True
        for f, v in VOCAB.items():
            features[f][row, span] = torch.randint(2, v, (n,), generator=g)
    return features, mask


@pytest.mark.parametrize("fusion", FUSIONS)
def test_shapes_and_zero_padding(fusion):
    encoder = make_encoder(fusion)
    features, mask = padded([5, 2], L=6, left=False)
    out = encoder(features, mask)
    assert out.shape == (2, 6, 16)
    assert (out[~mask] == 0).all()
    assert (out[mask].abs().sum(-1) > 0).all()


def test_early_fusion_with_narrow_feature_embeddings():
    encoder = make_encoder("early", feature_dim=4)
    assert encoder.embeddings["item"].embedding_dim == 4
    features, mask = padded([3], L=4, left=False)
    assert encoder(features, mask).shape == (1, 4, 16)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_left_and_right_padding_agree_at_real_positions(fusion):
    encoder = make_encoder(fusion)
    lengths = [5, 3, 1]
    right = encoder(*padded(lengths, L=7, left=False))
    features, mask = padded(lengths, L=7, left=True)
    left = encoder(features, mask)
    for row, n in enumerate(lengths):
        torch.testing.assert_close(left[row, 7 - n:], right[row, :n], atol=1e-5, rtol=1e-5)
    last_right = right[torch.arange(3), torch.tensor(lengths) - 1]
    torch.testing.assert_close(UserEncoder.last_state(left, mask), last_right, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_no_nan_with_empty_rows_and_leading_padding_including_gradients(fusion):
    encoder = make_encoder(fusion, dropout=0.1).train()
    features, mask = padded([0, 2, 6], L=6, left=True)  # an empty row and leading padding
    out = encoder(features, mask)
    assert torch.isfinite(out).all()
    assert (out[0] == 0).all()
    out.sum().backward()
    for name, p in encoder.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    assert (UserEncoder.last_state(out, mask)[0] == 0).all()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_causal_future_events_do_not_change_the_past(fusion):
    encoder = make_encoder(fusion)
    features, mask = padded([6], L=6, left=False)
    before = encoder(features, mask)
    t = 2
    changed = {f: x.clone() for f, x in features.items()}
    changed["item"][0, t + 1:] = (changed["item"][0, t + 1:] + 1) % (VOCAB["item"] - 2) + 2
    after = encoder(changed, mask)
    torch.testing.assert_close(after[0, : t + 1], before[0, : t + 1])
    assert not torch.allclose(after[0, t + 1], before[0, t + 1])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(fusion="middle"), "fusion"),
        (dict(features=["item", "genre"]), "no vocabulary size"),
        (dict(dim=15, heads=2), "not divisible"),
        (dict(fusion="sum", feature_dim=8), "feature_dim"),
        (dict(fusion="late", feature_dim=5), "not divisible"),
        (dict(features=[]), "empty"),
    ],
)
def test_config_errors_name_the_problem(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(**overrides)


def test_config_round_trips_through_a_weights_only_checkpoint():
    config = make_config(fusion="late", feature_dim=8)
    encoder = UserEncoder(config)
    buffer = io.BytesIO()
    torch.save({"config": asdict(config), "state_dict": encoder.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    restored = UserEncoder(EncoderConfig(**saved["config"]))
    restored.load_state_dict(saved["state_dict"])
    assert restored.config == config


def test_too_long_history_fails_clearly():
    encoder = make_encoder("early")
    with pytest.raises(ValueError, match="max_len"):
        encoder(*padded([13], L=13, left=False))


def test_loss_matches_manual_cross_entropy():
    config = EncoderConfig(vocab_sizes={"item": 6, "rating": 4}, features=["item", "rating"], dim=8, heads=2)
    heads = NextEventHeads(config)
    hidden = torch.randn(2, 3, 8)
    targets = {"item": torch.tensor([[2, 5, 0], [3, 0, 0]]), "rating": torch.tensor([[1, 2, 3], [0, 0, 0]])}
    weights = {"item": 1.0, "rating": 0.5}
    total, per_feature = heads.loss(hidden, targets, weights)

    def manual(feature, positions, labels):
        layer = heads.heads[feature]
        rows = torch.stack([hidden[b, t] for b, t in positions]) @ layer.weight.T + layer.bias
        return -sum(rows[i].log_softmax(-1)[y] for i, y in enumerate(labels)) / len(labels)

    item = manual("item", [(0, 0), (0, 1), (1, 0)], [2, 5, 3])
    rating = manual("rating", [(0, 0), (0, 1), (0, 2)], [1, 2, 3])
    torch.testing.assert_close(per_feature["item"], item)
    torch.testing.assert_close(per_feature["rating"], rating)
    torch.testing.assert_close(total, item + 0.5 * rating)
    with pytest.raises(ValueError, match="unknown features"):
        heads.loss(hidden, targets, {"itme": 1.0})


def test_loss_with_no_targets_is_zero_not_nan():
    heads = NextEventHeads(make_config())
    hidden = torch.randn(1, 2, 16, requires_grad=True)
    total, _ = heads.loss(hidden, {"item": torch.zeros(1, 2, dtype=torch.long)})
    assert total.item() == 0.0
    total.backward()
    assert (hidden.grad == 0).all()


def test_tied_item_head_shares_the_input_embedding():
    encoder = make_encoder("sum")
    heads = NextEventHeads(encoder.config, tie_to={"item": encoder.embeddings["item"]})
    assert heads.heads["item"].weight is encoder.embeddings["item"].weight
    narrow = make_encoder("early", feature_dim=4)
    with pytest.raises(ValueError, match="cannot tie"):
        NextEventHeads(narrow.config, tie_to={"item": narrow.embeddings["item"]})


def test_sampled_softmax_is_finite_and_masks_accidental_hits():
    config = make_config(vocab_sizes={**VOCAB, "item": 50})
    heads = NextEventHeads(config)
    hidden = torch.randn(2, 4, 16, requires_grad=True)
    targets = {"item": torch.randint(2, 50, (2, 4)), "rating": torch.randint(0, 7, (2, 4))}
    total, per_feature = heads.loss(hidden, targets, sampled_negatives=8)
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(hidden.grad).all()
    # rating's vocabulary (7) is not larger than 8 negatives: it keeps the full softmax
    keep = targets["rating"] != 0
    full = F.cross_entropy(heads.logits(hidden[keep], "rating"), targets["rating"][keep])
    torch.testing.assert_close(per_feature["rating"], full)

    h = torch.randn(3, 16)
    torch.manual_seed(0)
    negatives = torch.randint(1, 50, (30,))  # the draw _sampled_logits will make after the same seed
    target = negatives[:3].clone()  # so each row's target is certainly among the negatives
    torch.manual_seed(0)
    logits, labels = heads._sampled_logits("item", h, target, 30)
    assert (labels == 0).all() and torch.isfinite(logits[:, 0]).all()
    assert torch.equal(torch.isinf(logits[:, 1:]), negatives[None, :] == target[:, None])


def test_perceiver_output_shape_does_not_depend_on_history_length():
    perceiver = PerceiverResampler(dim_in=16, dim=8, num_latents=4, layers=2, heads=2)
    for n in (1, 3, 10):
        assert perceiver(torch.randn(2, n, 16), torch.ones(2, n, dtype=torch.bool)).shape == (2, 4, 8)


def test_perceiver_ignores_padded_events_and_never_nans():
    perceiver = PerceiverResampler(dim_in=16, dim=8, num_latents=4, layers=2, heads=2).eval()
    events = torch.randn(3, 5, 16, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    out = perceiver(events, mask)
    noisy = events.detach().clone()
    noisy[~mask] = torch.randn(int((~mask).sum()), 16) * 100
    torch.testing.assert_close(perceiver(noisy, mask), out.detach())
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(events.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in perceiver.parameters() if p.grad is not None)


def test_multi_valued_feature_embeds_to_the_mean_of_its_values():
    config = EncoderConfig(vocab_sizes={"item": 6, "categories": 5}, features=["item", "categories"], dim=8,
                           heads=2, dropout=0.0, fusion="sum")
    encoder = UserEncoder(config).eval()
    values = torch.tensor([[[2, 3, 0], [4, 0, 0]]])
    embedded = encoder._embed("categories", values)
    table = encoder.embeddings["categories"].weight
    torch.testing.assert_close(embedded[0, 0], (table[2] + table[3]) / 2)
    torch.testing.assert_close(embedded[0, 1], table[4])
    items, mask = torch.tensor([[2, 3]]), torch.ones(1, 2, dtype=torch.bool)
    assert encoder({"item": items, "categories": values}, mask).shape == (1, 2, 8)
    with pytest.raises(ValueError, match="multi-valued"):
        encoder({"item": items, "categories": values[..., None]}, mask)


def test_multi_valued_loss_is_cross_entropy_against_the_uniform_distribution_of_values():
    config = EncoderConfig(vocab_sizes={"categories": 5}, features=["categories"], dim=8, heads=2)
    heads = NextEventHeads(config)
    hidden = torch.randn(1, 3, 8)
    targets = {"categories": torch.tensor([[[2, 3], [4, 0], [0, 0]]])}  # the last position has no value
    _, per_feature = heads.loss(hidden, targets, sampled_negatives=2)  # small vocabularies: full softmax
    log_probs = heads.logits(hidden[0, :2], "categories").log_softmax(-1)
    expected = (-(log_probs[0, 2] + log_probs[0, 3]) / 2 - log_probs[1, 4]) / 2
    torch.testing.assert_close(per_feature["categories"], expected)
