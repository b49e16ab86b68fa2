"""Scoring one query against N candidates: DSE's siamese student (candidates embedded once and cached) against the
cross-encoder teacher (N pair forward passes), on the CPU.

    python bench/bench_dse.py [--encoders tiny minilm] [--sizes 100 1000 10000] [--out bench/results/dse.json]

Both models are built as the DSE notebook builds them: `cross_encoder` (the family's encoder over the concatenated pair)
and `SiameseStudent` (the family's encoder as the towers, DSE's concat head [512, 1]). Weights are left untrained: the
time of a forward pass does not depend on them. The candidates are frame sentences. The timed student step is one
query forward pass plus the head over N cached candidate embeddings (`one_to_many`). The timed teacher step is N pair
forward passes in batches of 256. `cache_ms` is the one-off embedding of the N candidates, which every later query
reuses. The median of the repeats is reported, and the speed-up teacher / student.
"""
import argparse, json, os, platform, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from timing import time_step

def make_models(encoder):
    import torch
    from contrastlab.sentence import sentence_protocol, sentence_data, sentence_encoder
    from contrastlab.zoo.dse import cross_encoder, SiameseStudent
    p = sentence_protocol("ci", encoder=encoder)
    data = sentence_data(p)
    torch.manual_seed(0)
    return cross_encoder(data, p).eval(), SiameseStudent(sentence_encoder(data, p)).eval()

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoders", nargs="+", default=["tiny", "minilm"], choices=["tiny", "minilm"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of timed repeats per configuration (at least 3 repeats unless one is slow)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dse.json")
    a = ap.parse_args()
    import torch
    from contrastlab.data.sentences import frame_sentences
    from contrastlab.zoo.dse import one_to_many
    threads = int(os.environ.get("BENCH_THREADS", "2")); torch.set_num_threads(threads)
    rows = []
    for enc in a.encoders:
        teacher, student = make_models(enc)
        for n in a.sizes:
            cands = frame_sentences(n, seed=7); query = frame_sentences(1, seed=8)[0]
            cache = student.cache(cands)
            r = dict(cache=time_step(lambda: student.cache(cands), a.budget, slow_factor=4),
                     student=time_step(lambda: one_to_many(student, query, cache), a.budget, slow_factor=4),
                     teacher=time_step(lambda: one_to_many(teacher, query, cands), a.budget, slow_factor=4))
            row = dict(encoder=enc, N=n, student_ms=r["student"]["ms"], teacher_ms=r["teacher"]["ms"], cache_ms=r["cache"]["ms"],
                       speedup=r["teacher"]["ms"] / r["student"]["ms"], repeats={k: v["repeats"] for k, v in r.items()})
            rows.append(row)
            print(f"{enc:<6} N={n:<6} student {row['student_ms']:9.2f} ms   teacher {row['teacher_ms']:10.2f} ms   "
                  f"(candidates cached once: {row['cache_ms']:9.2f} ms)   speed-up {row['speedup']:8.1f}×", flush=True)
    meta = dict(threads=threads, cpu=platform.processor() or platform.machine(), python=platform.python_version(), torch=torch.__version__,
                date=time.strftime("%Y-%m-%d"), nproc=os.cpu_count(),
                step="student: one query forward + head over N cached embeddings; teacher: N pair forwards (batches of 256); median of repeats")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
    print(f"\nwritten to {a.out}")

if __name__ == "__main__":
    main()
