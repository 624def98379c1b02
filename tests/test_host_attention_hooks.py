"""Tier 2: the DiT attention hook on its own: which calls it perturbs and where it finds the image tokens.

Self-attention only (keys as many as queries, holding the image grid): cross-attention to text or to reference
images in the same block runs untouched. Families that put the image tokens before the text (HunyuanVideo)
are reordered for the perturbation and back, as are families that pad the image tokens (Z-Image). Video grids
count frames × h × w tokens.
"""
import pytest
import torch

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def hooks(comfy):
    from guidekit.nodes import attention_hooks
    return attention_hooks


def sdpa(q, k, v, heads, skip_reshape=False, **kwargs):
    """The host's attention as ComfyUI calls it in DiTs (heads-first tensors with skip_reshape)."""
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return out if kwargs.get("skip_output_reshape") else out.transpose(1, 2).flatten(2)


def call(hooks, perturb, q, k, v, grid, image_first=False, rows=(0,), labels=(0,), image_pad=0, **kwargs):
    from guidekit.nodes.layers import Architecture
    token = object()
    arch = Architecture("test", "Test", (("double", 0),), (1, 1, 1), "double.0", "double.0", image_first, image_pad)
    hook = hooks.DiTSelfAttention(token, perturb, [("double", 0)], None, arch)
    to = {"block_type": "double", "block_index": 0, "cond_or_uncond": list(labels),
          hooks.MARK: {r: token for r in rows}, hooks.GRID: grid}
    return hook(sdpa, q, k, v, q.shape[1], skip_reshape=True, transformer_options=to, **kwargs)


def test_cross_attention_in_a_chosen_block_is_left_alone(hooks):
    seen = []

    def perturb(q, k, v, grid):
        seen.append(grid)
        return v
    g = torch.Generator().manual_seed(0)
    q, k_text, v_text = (torch.randn(1, 2, 12, 4, generator=g), torch.randn(1, 2, 7, 4, generator=g),
                         torch.randn(1, 2, 7, 4, generator=g))
    out = call(hooks, perturb, q, k_text, v_text, (1, 3, 4))
    torch.testing.assert_close(out, sdpa(q, k_text, v_text, 2))
    assert not seen
    k_self, v_self = torch.randn(1, 2, 12, 4, generator=g), torch.randn(1, 2, 12, 4, generator=g)
    out = call(hooks, perturb, q, k_self, v_self, (1, 3, 4))
    assert seen == [(1, 3, 4)]
    torch.testing.assert_close(out, v_self.transpose(1, 2).flatten(2))


def test_image_first_sequences_are_perturbed_on_their_image_tokens(hooks):
    """PAG on [image, text] equals PAG on [text, image] with the output reordered the same way."""
    from guidekit.nodes.pag import identity_perturbation
    g = torch.Generator().manual_seed(1)
    n_img, n_txt = 6, 5
    q, k, v = (torch.randn(1, 2, n_img + n_txt, 4, generator=g) for _ in range(3))
    first = call(hooks, identity_perturbation, q, k, v, (1, 2, 3), image_first=True)
    swap = [torch.cat([t[:, :, n_img:], t[:, :, :n_img]], dim=2) for t in (q, k, v)]
    last = call(hooks, identity_perturbation, *swap, (1, 2, 3), image_first=False)
    last = last.unflatten(2, (2, 4)).transpose(1, 2)
    expected = torch.cat([last[:, :, n_txt:], last[:, :, :n_txt]], dim=2).transpose(1, 2).flatten(2)
    torch.testing.assert_close(first, expected)
    image_out = first.unflatten(2, (2, 4)).transpose(1, 2)[:, :, :n_img]
    assert not torch.allclose(image_out, v[:, :, :n_img]), "image queries also see the text keys"


def test_padded_image_tokens_are_found_before_their_padding(hooks):
    """[text 5, image 6, pad 2] (padded to a multiple of 8): the perturbation gets [text, pad, image] and its
    output goes back in place: PAG on the padded sequence = PAG on [text, pad, image], reordered back."""
    from guidekit.nodes.pag import identity_perturbation
    assert hooks.image_start(13, 6, False, 8) == 5 and hooks.image_start(13, 6, True, 8) == 0
    assert hooks.image_start(11, 6, False, 0) == 5 and hooks.image_start(12, 6, False, 3) == 6
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 13, 4, generator=g) for _ in range(3))
    seen = []

    def perturb(q_, k_, v_, grid):
        seen.append(q_)
        return identity_perturbation(q_, k_, v_, grid)
    padded = call(hooks, perturb, q, k, v, (1, 2, 3), image_pad=8).unflatten(2, (2, 4)).transpose(1, 2)
    reorder = [torch.cat([t[:, :, :5], t[:, :, 11:], t[:, :, 5:11]], dim=2) for t in (q, k, v)]
    torch.testing.assert_close(seen[0], reorder[0])
    last = call(hooks, identity_perturbation, *reorder, (1, 2, 3)).unflatten(2, (2, 4)).transpose(1, 2)
    torch.testing.assert_close(padded, torch.cat([last[:, :, :5], last[:, :, 7:], last[:, :, 5:7]], dim=2))
    unpadded = call(hooks, identity_perturbation, q, k, v, (1, 2, 3)).unflatten(2, (2, 4)).transpose(1, 2)
    assert not torch.allclose(padded, unpadded), "taking the last 6 tokens for the image must differ"


def test_grouped_query_keys_get_every_head(hooks):
    """enable_gqa (OmniGen2 on ComfyUI 0.33: here 2 key/value heads for 4 query heads): the perturbation and the
    host's attention get the keys and values repeated per head, as enable_gqa computes them."""
    from guidekit.nodes.pag import identity_perturbation
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 4, 9, 8, generator=g)
    k, v = torch.randn(2, 2, 9, 8, generator=g), torch.randn(2, 2, 9, 8, generator=g)
    full = [t.repeat_interleave(2, dim=1) for t in (k, v)]
    for rows in ((0,), (0, 1)):
        grouped = call(hooks, identity_perturbation, q, k, v, (1, 2, 3), rows=rows, labels=(0, 1), enable_gqa=True)
        torch.testing.assert_close(grouped, call(hooks, identity_perturbation, q, *full, (1, 2, 3), rows=rows,
                                                 labels=(0, 1)))


def test_video_grids_count_frames(hooks):
    seen = []

    def perturb(q, k, v, grid):
        seen.append((grid, q.shape[2]))
        return None
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 2, 3 * 2 * 2, 4, generator=g)
    call(hooks, perturb, q, q, q, (3, 2, 2))
    assert seen == [((3, 2, 2), 12)]


def test_only_the_marked_rows_are_perturbed(hooks):
    """Two chunks (cond, uncond): the perturbation sees the marked chunk; the other runs plain attention."""
    from guidekit.nodes.pag import identity_perturbation
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 6, 4, generator=g) for _ in range(3))
    out = call(hooks, identity_perturbation, q, k, v, (1, 2, 3), rows=(0,), labels=(0, 1))
    torch.testing.assert_close(out[:1], v[:1].transpose(1, 2).flatten(2))
    torch.testing.assert_close(out[1:], sdpa(q[1:], k[1:], v[1:], 2))
