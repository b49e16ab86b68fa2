"""One timing loop for the zoo's benchmarks: a warm-up call, then repeats until a time budget, the median reported."""
import time

def time_step(step, budget_s, max_reps=15, slow_factor=None):
    """Time `step()` after one warm-up call: at least 3 and at most `max_reps` repeats, stopping once `budget_s` is spent.
    With `slow_factor`, a step whose warm-up alone is slow stops once the repeats would exceed `slow_factor × budget_s`."""
    t0 = time.perf_counter(); step(); first = time.perf_counter() - t0
    times = []
    while len(times) < max_reps and (len(times) < 3 or sum(times) < budget_s):
        if slow_factor is not None and first * (len(times) + 1) >= slow_factor * budget_s + first: break
        t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
    times.sort()
    return dict(ms=1000 * times[len(times) // 2], min_ms=1000 * times[0], repeats=len(times), first_ms=1000 * first)
