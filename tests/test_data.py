"""Scanning image folders and CSVs, the seeded split, the resumable sampler and the dataset."""

import os
import warnings

import numpy as np
import pytest
import torch
from images_corpus import pattern, png_bytes, write_corpus
from PIL import Image

from vislora.classify.folders import DatasetError, SkippedImageWarning, scan, split
from vislora.classify.dataset import ImageDataset, Preprocess
from vislora.train.sampling import EpochBatches


def _folder(root, counts: dict[str, int]):
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / name / f"{i}.png").write_bytes(png_bytes(Image.fromarray(pattern(seed=i))))
    return root


def test_classes_are_sorted_folders_and_bad_files_warn_once_each(tmp_path):
    root = _folder(tmp_path / "data", {"b_dogs": 2, "a_cats": 3})
    names, skipped = write_corpus(root / "a_cats" / "odd")  # nested folders belong to their class
    (root / "a_cats" / ".hidden.png").write_bytes(b"junk")  # hidden files are not data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = scan(root)
    assert samples.class_to_idx == {"a_cats": 0, "b_dogs": 1}
    assert len(samples) == 5 + len(names) - len(skipped)
    assert sorted(os.path.basename(p) for p, _ in samples.skipped) == sorted(skipped)
    messages = [str(w.message) for w in caught if issubclass(w.category, SkippedImageWarning)]
    for name in skipped:
        assert sum(f"{os.sep}{name}:" in m for m in messages) == 1, name
    assert messages[-1].endswith(f"{len(skipped)} files skipped")


def test_the_dataset_never_fails_on_the_corpus(tmp_path):
    root = tmp_path / "data"
    write_corpus(root / "only")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = scan(root)
    pre = Preprocess(16, (0.5,) * 3, (0.5,) * 3)
    data = ImageDataset(samples, pre.train_transform(hflip=0.5), seed=3)
    for i in range(len(data)):
        x, label, index = data[(1, i)]
        assert x.shape == (3, 16, 16) and label == 0 and index == i
    # The same (epoch, image) is augmented the same way every time; another epoch differently.
    assert torch.equal(data[(1, 0)][0], data[(1, 0)][0])
    assert not torch.equal(data[(1, 0)][0], data[(2, 0)][0])


def test_a_file_that_breaks_after_the_scan_is_replaced_not_fatal(tmp_path):
    root = _folder(tmp_path / "data", {"a": 3})
    samples = scan(root)
    (root / "a" / "0.png").write_bytes(b"")
    data = ImageDataset(samples, Preprocess(8, (0.5,) * 3, (0.5,) * 3).eval_transform())
    with pytest.warns(SkippedImageWarning, match="0.png"):
        _, _, used = data[0]
    assert used == 1


@pytest.mark.parametrize("layout, message", [
    ({}, "no such folder"),
    ({"a": 2, "empty": 0}, "empty"),
    ({"loose": None}, "in the root"),
    ({"nothing_here": "file"}, "no class subfolders"),
])
def test_unusable_folders_fail_before_any_work(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout:
        root.mkdir()
    for name, n in layout.items():
        if n is None:
            (root / "x.png").write_bytes(png_bytes(Image.fromarray(pattern())))
        elif n == "file":
            (root / "readme.md").write_text("hi")
        else:
            _folder(root, {name: n})
    with pytest.raises(DatasetError, match=message) as e:
        scan(root)
    assert str(root) in str(e.value)


def test_a_folder_of_unreadable_files_is_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"<html>")
    with pytest.raises(DatasetError, match="none of its 1 files"), pytest.warns(SkippedImageWarning):
        scan(tmp_path)


def test_links_out_of_the_root_are_skipped(tmp_path):
    outside = _folder(tmp_path / "elsewhere", {"x": 1})
    root = _folder(tmp_path / "data", {"a": 1})
    os.symlink(outside / "x" / "0.png", root / "a" / "link.png")
    os.symlink(root / "a", root / "a" / "loop")  # a folder link (and a loop): not followed
    with pytest.warns(SkippedImageWarning) as record:
        samples = scan(root)
    assert len(samples) == 1
    assert [str(w.message).split(":")[0] for w in record] == [f"skipped {root / 'a' / 'link.png'}", str(root)]


def test_validation_classes_keep_the_training_indices(tmp_path):
    train = scan(_folder(tmp_path / "train", {"a": 1, "b": 1, "c": 1}))
    val = scan(_folder(tmp_path / "val", {"c": 1}), class_to_idx=train.class_to_idx)
    assert val.labels == [2]
    with pytest.raises(DatasetError, match="not among the training classes"):
        scan(_folder(tmp_path / "val2", {"d": 1}), class_to_idx=train.class_to_idx)


def test_csv_rows(tmp_path):
    _folder(tmp_path / "imgs", {"x": 2})
    (tmp_path / "list.csv").write_text("path,label\nimgs/x/0.png,zebra\nimgs/x/1.png,ant\nimgs/x/missing.png,ant\n")
    with pytest.warns(SkippedImageWarning) as record:
        samples = scan(tmp_path / "list.csv")
    assert "missing.png" in str(record[0].message) and str(record[1].message).endswith("1 files skipped")
    assert samples.class_to_idx == {"ant": 0, "zebra": 1} and samples.labels == [1, 0]
    (tmp_path / "bad.csv").write_text("only-one-column\n")
    with pytest.raises(DatasetError, match="line 1"):
        scan(tmp_path / "bad.csv")


def test_split_is_seeded_stratified_and_disjoint(tmp_path):
    samples = scan(_folder(tmp_path / "d", {"a": 10, "b": 5}))
    train, val = split(samples, 0.2, seed=1)
    again, _ = split(samples, 0.2, seed=1)
    assert train.paths == again.paths
    assert sorted(train.paths + val.paths) == sorted(samples.paths)
    assert sorted(val.labels) == [0, 0, 1]


def test_resumed_epochs_replay_the_same_order_without_gaps_or_repeats():
    n, batch, world = 23, 3, 2
    full = {r: list(EpochBatches(n, batch, epoch=4, seed=9, rank=r, world=world)) for r in range(world)}
    seen = [i for r in range(world) for b in full[r] for _, i in b]
    assert len(seen) == len(set(seen)) == (n // (batch * world)) * batch * world  # drop_last: whole steps only
    for start in range(len(full[0])):
        for r in range(world):
            assert list(EpochBatches(n, batch, epoch=4, seed=9, rank=r, world=world, start=start)) == full[r][start:]
    # One process with the global batch sees the same images per step as two processes together.
    single = list(EpochBatches(n, batch * world, epoch=4, seed=9))
    assert [sorted(b) for b in single] == [sorted(full[0][k] + full[1][k]) for k in range(len(single))]
    other = list(EpochBatches(n, batch, epoch=5, seed=9, world=world))
    assert other != full[0]


def test_validation_batches_cover_everything_once():
    n = 10
    shares = [i for r in range(3) for b in EpochBatches(n, 2, rank=r, world=3, shuffle=False, drop_last=False)
              for _, i in b]
    assert sorted(shares) == list(range(n))
    assert np.all(np.diff([i for _, i in next(iter(EpochBatches(n, 4, shuffle=False)))]) == 1)
