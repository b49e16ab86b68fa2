"""The retrieval index helper (`contrastlab.metrics.ir`): exact chunked search in torch against a full matrix product and
against faiss-cpu's IndexFlatIP, nDCG@k and Recall@k (hand-worked and against a slow loop), BM25 through bm25s, and the
validation messages at the public boundary."""
import math
import numpy as np
import pytest
import torch
from contrastlab.metrics.ir import exact_search, faiss_search, search, ndcg_at_k, recall_at_k_ir, ir_metrics, bm25_search

def _unit(n, d, seed):
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)

# ---- search -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk,query_chunk", [(1, 1), (7, 3), (64, 1000), (10_000, 10_000)])
def test_exact_search_equals_the_full_matrix_at_any_chunk(chunk, query_chunk):
    q, d = _unit(23, 8, 0), _unit(301, 8, 1)
    full = (q @ d.T).topk(15, dim=1)
    s, i = exact_search(q, d, 15, chunk=chunk, query_chunk=query_chunk)
    assert i.shape == (23, 15) and i.dtype == torch.long
    assert torch.equal(i, full.indices); torch.testing.assert_close(s, full.values)

def test_exact_search_never_builds_the_full_matrix(monkeypatch):
    "With blocks of 50 documents and 8 queries, no product larger than 8 × 50 is formed."
    q, d = _unit(40, 4, 2), _unit(500, 4, 3)
    sizes, real = [], torch.Tensor.__matmul__
    def spy(a, b):
        out = real(a, b); sizes.append(out.numel()); return out
    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    exact_search(q, d, 10, chunk=50, query_chunk=8)
    assert sizes and max(sizes) <= 8 * 50

def test_faiss_and_torch_return_the_same_ranking():
    q, d = _unit(60, 32, 4), _unit(2000, 32, 5)
    (ts, ti), (fs, fi) = exact_search(q, d, 100, chunk=256), faiss_search(q, d, 100)
    assert torch.equal(ti, fi); torch.testing.assert_close(ts, fs, atol=1e-5, rtol=1e-5)
    assert torch.equal(search(q, d, 100, backend="faiss")[1], search(q, d, 100, backend="torch")[1])

def test_float64_inputs_are_searched_in_float64():
    q, d = _unit(3, 4, 6).double(), _unit(9, 4, 7).double()
    s, _ = exact_search(q, d, 2)
    assert s.dtype == torch.float64

def test_search_validates():
    q, d = _unit(3, 4, 0), _unit(9, 4, 1)
    with pytest.raises(ValueError, match="same width"): exact_search(q, _unit(9, 5, 1), 2)
    with pytest.raises(ValueError, match="k"): exact_search(q, d, 10)
    with pytest.raises(ValueError, match="k"): faiss_search(q, d, 0)
    with pytest.raises(ValueError, match="backend"): search(q, d, 2, backend="annoy")
    with pytest.raises(TypeError, match="chunk"): search(q, d, 2, backend="faiss", chunk=4)
    with pytest.raises((ValueError, TypeError), match="queries"): exact_search(torch.ones(3), d, 2)
    with pytest.raises((ValueError, TypeError), match="corpus"): exact_search(q, torch.full((9, 4), float("nan")), 2)

# ---- metrics ----------------------------------------------------------------------------------------------------
def slow_ndcg(ranked, relevant, k):
    total = 0.0
    for row, rel in zip(ranked, relevant):
        dcg = 0.0
        for r in range(k):
            if row[r] in rel: dcg += 1.0 / math.log2(r + 2)
        idcg = sum(1.0 / math.log2(r + 2) for r in range(min(k, len(rel))))
        total += dcg / idcg
    return total / len(ranked)

def slow_recall(ranked, relevant, k):
    return sum(sum(1 for d in row[:k] if d in rel) / len(rel) for row, rel in zip(ranked, relevant)) / len(ranked)

def test_hand_worked_ndcg_and_recall():
    ranked = torch.tensor([[5, 7, 1, 2], [3, 0, 4, 9], [8, 6, 2, 1]])
    rel = [[7], [3, 4], [0]]
    # query 0: relevant at rank 2 → 1/log2(3); query 1: ranks 1 and 3 → (1 + 1/2)/(1 + 1/log2(3)); query 2: none retrieved → 0
    want = [1 / math.log2(3), 1.5 / (1 + 1 / math.log2(3)), 0.0]
    torch.testing.assert_close(ndcg_at_k(ranked, rel, 4, reduction="none"), torch.tensor(want, dtype=torch.float64))
    assert ndcg_at_k(ranked, rel, 4) == pytest.approx(sum(want) / 3)
    torch.testing.assert_close(recall_at_k_ir(ranked, rel, 2, reduction="none"), torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))
    assert recall_at_k_ir(ranked, rel, 4) == pytest.approx((1 + 1 + 0) / 3)
    assert ndcg_at_k(torch.tensor([[4, 1]]), torch.tensor([4]), 2) == 1.0

def test_metrics_match_the_slow_loop():
    rng = np.random.default_rng(0)
    ranked = torch.from_numpy(np.stack([rng.permutation(200)[:120] for _ in range(50)]))
    rel = [set(rng.choice(200, size=rng.integers(1, 6), replace=False).tolist()) for _ in range(50)]
    lists = ranked.tolist()
    for k in (1, 10, 100):
        assert ndcg_at_k(ranked, rel, k) == pytest.approx(slow_ndcg(lists, rel, k), abs=1e-12)
        assert recall_at_k_ir(ranked, rel, k) == pytest.approx(slow_recall(lists, rel, k), abs=1e-12)
    m = ir_metrics(ranked, rel)
    assert set(m) == {"ndcg10", "r100"} and m["ndcg10"] == pytest.approx(slow_ndcg(lists, rel, 10))

def test_ir_metrics_shrinks_recall_to_the_ranking():
    assert set(ir_metrics(torch.tensor([list(range(20))]), [[3]])) == {"ndcg10", "r20"}
    assert set(ir_metrics(torch.tensor([list(range(5))]), [[3]])) == {"ndcg5", "r5"}

def test_metrics_validate():
    ranked = torch.tensor([[0, 1, 2], [2, 1, 0]])
    with pytest.raises(ValueError, match="each of the 2 queries"): ndcg_at_k(ranked, [[0]], 3)
    with pytest.raises(ValueError, match="no relevant"): recall_at_k_ir(ranked, [[0], []], 3)
    with pytest.raises(ValueError, match="at least k = 5"): ndcg_at_k(ranked, [[0], [1]], 5)
    with pytest.raises(ValueError, match="≥ 0"): ndcg_at_k(ranked, [[-1], [1]], 3)
    with pytest.raises((ValueError, TypeError), match="ranked"): ndcg_at_k(ranked.float(), [[0], [1]], 3)
    with pytest.raises(ValueError, match="reduction"): ndcg_at_k(ranked, [[0], [1]], 3, reduction="sum")

# ---- BM25 -------------------------------------------------------------------------------------------------------
DOCS = ["a small domesticated feline kept as a pet", "the edge of a river or lake", "an institution that keeps money safe",
        "a large wild feline with a mane", "running water flowing to the sea"]

def test_bm25_finds_the_shared_rare_word_with_stemming():
    s, i = bm25_search(["felines kept in houses", "rivers and lakes"], DOCS, k=3)
    assert i.shape == (2, 3) and int(i[0, 0]) == 0 and int(i[1, 0]) == 1
    assert float(s[0, 0]) >= float(s[0, 1]) >= float(s[0, 2])
    # without the stemmer "felines" no longer matches "feline"
    _, i2 = bm25_search(["felines"], DOCS, k=1, stemmer=None)
    s3, _ = bm25_search(["felines"], DOCS, k=5, stemmer=None)
    assert float(s3.max()) == 0.0

def test_bm25_validates():
    with pytest.raises(TypeError, match="queries must be a list of strings"): bm25_search("cat", DOCS)
    with pytest.raises(ValueError, match="documents must not be empty"): bm25_search(["cat"], [])
    with pytest.raises(ValueError, match="k"): bm25_search(["cat"], DOCS, k=6)
