import pytest

from agent.files import atomic_path


def test_a_file_written_through_atomic_path_appears_whole(tmp_path):
    target = tmp_path / "video.mp4"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".mp4" and tmp.parent == tmp_path  # writers that pick a format by suffix still can
        tmp.write_bytes(b"whole clip")
    assert target.read_bytes() == b"whole clip" and [p.name for p in tmp_path.iterdir()] == ["video.mp4"]


def test_a_writer_that_dies_midway_leaves_the_old_file_and_no_half_one(tmp_path):
    target = tmp_path / "frames.npy"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["frames.npy"]
