"""Prototype of contrastive search (Su et al., arXiv 2210.14140) on `contrastlab.decoding.TinyLM`, not yet a zoo notebook.

For each step: the top-k tokens of p(v | x_<t); one cached forward pass of the k candidates gives their last-layer
(final-LayerNorm) states h_v; the degeneration penalty is max_j cos(h_v, h_j) over every earlier position (prompt included);
the chosen token maximises (1 − α)·p(v) − α·penalty. α = 0 picks the most probable token: greedy decoding."""
import torch
import torch.nn.functional as F
from contrastlab.decoding import _check_prompt, select_cache

@torch.no_grad()
def contrastive_search(model, prompt_ids, k=5, alpha=0.6, max_new_tokens=32):
    ids, T = _check_prompt(model, prompt_ids, max_new_tokens)
    B = ids.shape[0]; ar = torch.arange(B, device=ids.device)
    out = model(ids, logits="last"); ctx, logits, cache, seq = out.last, out.logits, out.cache, [ids]
    for _ in range(T):
        top_p, top_i = logits.softmax(-1).topk(k, -1)                                      # (B, k)
        cand = model(top_i.reshape(-1, 1), cache=select_cache(cache, ar.repeat_interleave(k)), logits="last")
        h = cand.last[:, -1].reshape(B, k, -1)
        pen = (F.normalize(h, dim=-1) @ F.normalize(ctx, dim=-1).transpose(1, 2)).amax(-1)  # (B, k)
        best = ((1 - alpha) * top_p - alpha * pen).argmax(-1); pick = ar * k + best
        seq.append(top_i[ar, best][:, None])
        ctx = torch.cat([ctx, h[ar, best][:, None]], 1); logits = cand.logits[pick]; cache = select_cache(cand.cache, pick)
    return torch.cat(seq, 1)
