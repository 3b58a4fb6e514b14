"""Driving one segmenter from many threads: `assert_threads_match_serial` runs jobs serially and then from several
threads at once and compares every result bit for bit; `mixed_jobs` is a set of jobs that covers the kinds of call."""

from __future__ import annotations


def mixed_jobs(seg, episode) -> list:
    """(query, support) jobs for the thread tests: two sets, the same set twice, an N-way call, and supports that
    are encoded in the call."""
    cats, dogs = seg.encode_supports(episode.supports[:2]), seg.encode_supports(episode.supports[2:3])
    other = episode.supports[4][0]
    return [
        (episode.query, cats),
        (other, dogs),
        (episode.query, {"cat": cats, "dog": dogs}),
        (other, episode.supports[3:4]),
    ]


def assert_threads_match_serial(seg, jobs, threads: int = 4, repeats: int = 3) -> int:
    """Run (query, support) jobs serially, then `repeats` times each from `threads` threads at once (started
    together at a barrier): every threaded result must be bit-identical to its serial one. A support given as a
    list of (image, mask) pairs is encoded in the call. Returns the calls made."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    def logits(result):
        parts = [result] if hasattr(result, "logits") else [result[n] for n in result] + [result]
        return [
            p.label_map.tobytes() if not hasattr(p, "logits") else p.logits.tobytes() + p.low_res_logits.tobytes()
            for p in parts
        ]

    def segment(query, support):
        return seg.segment(query, seg.encode_supports(support) if isinstance(support, list) else support)

    serial = [logits(segment(*job)) for job in jobs]
    work = [i for _ in range(repeats) for i in range(len(jobs))]
    barrier = threading.Barrier(threads)

    def call(n):
        if n < threads:
            barrier.wait()
        return logits(segment(*jobs[work[n]]))

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(call, range(len(work))))
    for n, got in enumerate(results):
        assert got == serial[work[n]], f"call {n} (job {work[n]}) differs from its serial result"
    return len(results)
