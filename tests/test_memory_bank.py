"""The contiguous support memory bank and how the segmenter feeds it."""

import numpy as np
import pytest

from runtime.memory_bank import MemoryBank


def _support(i: int, tokens: int = 4, channels: int = 3):
    mem = np.full((1, tokens, channels), i, np.float32)
    return mem, -mem


def test_append_grows_amortised_and_keeps_rows():
    bank = MemoryBank(initial_tokens=4)
    capacities = []
    for i in range(9):
        bank.append(*_support(i))
        capacities.append(bank.capacity)
    assert capacities == [4, 8, 16, 16, 32, 32, 32, 32, 64]  # doubling: O(log K) reallocations
    assert bank.tokens == 36 and bank.supports == 9
    expected = np.concatenate([_support(i)[0] for i in range(9)], axis=1)
    np.testing.assert_array_equal(bank.memory, expected)
    np.testing.assert_array_equal(bank.memory_pos, -expected)


def test_views_are_contiguous_and_share_the_buffer():
    bank = MemoryBank(initial_tokens=16)
    bank.append(*_support(1))
    bank.append(*_support(2))
    a, b = bank.memory, bank.memory
    assert a.shape == (1, 8, 3) and a.flags.c_contiguous and bank.memory_pos.flags.c_contiguous
    assert np.shares_memory(a, b)  # a view of the bank, not a copy per query


def test_reset_empties_the_bank_and_keeps_its_allocation():
    bank = MemoryBank()
    bank.append(*_support(1))
    bank.append(*_support(2))
    bank.reset()
    assert bank.tokens == 0 and bank.supports == 0
    cap = bank.capacity
    bank.append(*_support(3))
    assert bank.capacity == cap  # the allocation is reused after reset
    np.testing.assert_array_equal(bank.memory, _support(3)[0])


def test_bad_appends_and_empty_views_are_refused():
    bank = MemoryBank()
    with pytest.raises(RuntimeError, match="empty"):
        bank.memory
    with pytest.raises(ValueError, match=r"\(1, T, C\)"):
        bank.append(np.zeros((4, 3), np.float32), np.zeros((4, 3), np.float32))
    bank.append(*_support(1))
    with pytest.raises(ValueError, match="bank holds"):
        bank.append(*_support(1, channels=5))
    assert bank.supports == 1


def test_segmenter_feeds_bank_views_without_concatenation(artifacts, episode):
    from runtime import FewShotSegmenter, OrtBackend

    fed = []

    class Spy:
        name, provider = "spy", "cpu"

        def __init__(self):
            self.inner = OrtBackend("cpu")

        def load(self, path, spec):
            graph = self.inner.load(path, spec)

            class G:
                def run(self, feeds):
                    if "memory" in feeds:
                        fed.append((feeds["memory"], feeds["memory_pos"]))
                    return graph.run(feeds)

            return G()

    seg = FewShotSegmenter(artifacts, backend=Spy())
    for image, mask in episode.supports[:3]:
        seg.add_support(image, mask)
    seg.segment(episode.query)
    (memory, pos), = fed
    tokens = seg.manifest.episode.tokens_per_support
    assert memory.shape[1] == 3 * tokens and seg.memory_bank.tokens == 3 * tokens
    assert np.shares_memory(memory, seg.memory_bank.memory) and np.shares_memory(pos, seg.memory_bank.memory_pos)
    # FS-SAM2's memory position encoding is the same for every support (K repeats of the first's)
    np.testing.assert_array_equal(pos[:, tokens:2 * tokens], pos[:, :tokens])
