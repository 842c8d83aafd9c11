from __future__ import annotations

import subprocess
import sys
from collections import Counter

import cv2
import pytest

from _helpers import shared_manifest_rows
from endoedge.core.datasets import load_dataset, split_dataset
from endoedge.core.errors import DatasetError
from endoedge.core.importers import import_tree
from endoedge.core.labels import EGD30, GASTROVISION3


def test_import_real_tree_and_split(shared_data, tmp_path) -> None:
    dataset, report = import_tree(shared_data)
    expected = Counter(row["label"] for row in shared_manifest_rows(shared_data))
    assert dataset.labelset == GASTROVISION3
    assert len(dataset) == sum(expected.values()) and expected["esophagus_normal"] > 0
    assert report.images == dict(expected)
    path = dataset.write(tmp_path / "ds.csv")
    loaded = load_dataset(path)
    assert loaded.labels == dataset.labels
    split = split_dataset(loaded, val=0.1, test=0.1, seed=3)
    for cls, total in Counter(split.labels).items():
        test_n = sum(1 for r in split.records if r.label == cls and r.split == "test")
        assert abs(test_n - total / 10) <= 1
    again = split_dataset(loaded, val=0.1, test=0.1, seed=3)
    assert [r.split for r in again.records] == [r.split for r in split.records]
    other = split_dataset(loaded, val=0.1, test=0.1, seed=4)
    assert [r.split for r in other.records] != [r.split for r in split.records]


def test_patient_groups_never_leak(sample_dir, tmp_path) -> None:
    rows = ["path,label,patient_id"]
    for i, image in enumerate(sorted(sample_dir.rglob("*.jpg"))):
        rows.append(f"{image},{image.parent.name},P{i % 5}")
    csv_path = tmp_path / "ds.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    dataset = split_dataset(load_dataset(csv_path, labelset="gastrovision3"), val=0.2, test=0.2, seed=0)
    by_patient: dict[str, set[str]] = {}
    for r in dataset.records:
        by_patient.setdefault(r.patient_id, set()).add(r.split)
    assert all(len(s) == 1 for s in by_patient.values())
    assert {s for v in by_patient.values() for s in v} == {"train", "val", "test"}


def write_csv(tmp_path, sample_dir, body: str, header: str = "path,label,split,patient_id,x0,y0,x1,y1"):
    image = sorted(sample_dir.rglob("*.jpg"))[0]
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text(f"# endoedge-dataset v1 labelset=gastrovision3\n{header}\n" + body.format(img=image))
    return csv_path


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("{img},tumour,,,,,,\n", "bad.csv:row 3: label 'tumour' is not in label set gastrovision3@1"),
        ("nowhere.jpg,colon_polyp,,,,,,\n", "bad.csv:row 3: image 'nowhere.jpg' does not exist"),
        ("{img},colon_polyp,training,,,,,\n", "bad.csv:row 3: split 'training' is not one of"),
        ("{img},colon_polyp,,,10,10,5,20\n", "bad.csv:row 3: box (10,10,5,20) must have"),
        ("{img},colon_polyp,,,10,10,abc,20\n", "bad.csv:row 3: box values must be numbers"),
        ("{img},colon_polyp,,,10,10,,\n", "box needs all four"),
        ("{img},colon_polyp,,,,,,,extra\n", "bad.csv:row 3: 9 fields, header has 8"),
        ("{img},colon_polyp,train,P1,,,,\n{img},colon_polyp,test,P1,,,,\n", "already listed at row 3"),
    ],
)
def test_bad_rows_name_file_row_and_problem(tmp_path, sample_dir, body, expected) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset(write_csv(tmp_path, sample_dir, body))
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_patient_split_leak_is_an_error(tmp_path, sample_dir) -> None:
    images = sorted(sample_dir.rglob("*.jpg"))
    csv_path = tmp_path / "leak.csv"
    csv_path.write_text(
        f"path,label,split,patient_id\n{images[0]},colon_polyp,train,P1\n{images[1]},colon_polyp,test,P1\n"
    )
    with pytest.raises(DatasetError, match="row 3: patient_id 'P1' is in split 'test' here and 'train' at row 2"):
        load_dataset(csv_path, labelset=GASTROVISION3)


def test_boxes_outside_the_image_are_caught_when_checked(tmp_path, sample_dir) -> None:
    image = sorted(sample_dir.rglob("*.jpg"))[0]
    h, w = cv2.imread(str(image)).shape[:2]
    csv_path = write_csv(tmp_path, sample_dir, f"{{img}},colon_polyp,,,10,10,{w + 5},20\n")
    assert load_dataset(csv_path).records[0].box == (10, 10, w + 5, 20)
    with pytest.raises(DatasetError, match=f"leaves the {w}x{h} image"):
        load_dataset(csv_path, check_boxes_against_images=True)
    rel = write_csv(tmp_path, sample_dir, "{img},colon_polyp,,,0.1,0.2,0.5,0.9\n")
    record = load_dataset(rel).records[0]
    assert record.box_relative and record.box_pixels(200, 100) == (20, 20, 100, 90)


def test_missing_columns_and_label_set(tmp_path) -> None:
    plain = tmp_path / "plain.csv"
    plain.write_text("file,label\nx.jpg,a\n")
    with pytest.raises(DatasetError, match="no label set given"):
        load_dataset(plain)
    with pytest.raises(DatasetError, match="plain.csv:1: missing required column 'path'"):
        load_dataset(plain, labelset=EGD30)


def test_public_layout_mapping(tmp_path, sample_dir) -> None:
    image = sorted(sample_dir.rglob("*.jpg"))[0]
    tree = tmp_path / "hk" / "labeled-images" / "upper-gi-tract" / "anatomical-landmarks"
    for cls in ("z-line", "pylorus", "retroflex-stomach"):
        (tree / cls).mkdir(parents=True)
        (tree / cls / f"{cls}.jpg").write_bytes(image.read_bytes())
    (tmp_path / "hk" / "labeled-images" / "lower-gi-tract" / "polyps").mkdir(parents=True)
    (tmp_path / "hk" / "labeled-images" / "lower-gi-tract" / "polyps" / "p.jpg").write_bytes(image.read_bytes())
    dataset, report = import_tree(tmp_path / "hk", labelset="egd30", layout="hyperkvasir")
    assert sorted(EGD30.labels[r.label].key for r in dataset.records) == ["egj_line", "pylorus"]
    assert "retroflex-stomach" in report.grouped and "polyps" in report.unmapped
    assert "group of 11 labels" in report.summary()
    with pytest.raises(DatasetError, match="unknown layout 'kvasir-seg'"):
        import_tree(tmp_path / "hk", layout="kvasir-seg")


def test_cli_import_split_stats(shared_data, tmp_path) -> None:
    out = tmp_path / "ds.csv"
    run = [sys.executable, "-m", "endoedge.cli", "datasets"]
    done = subprocess.run([*run, "import", str(shared_data), "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([*run, "split", str(out), "--seed", "7"], capture_output=True, text=True)
    assert done.returncode == 0 and "test" in done.stdout
    done = subprocess.run([*run, "stats", str(out)], capture_output=True, text=True)
    total = len(shared_manifest_rows(shared_data))
    assert "esophagus_normal" in done.stdout and f" {total}" in done.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nmissing.jpg,colon_polyp\n")
    done = subprocess.run([*run, "stats", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no label set given" in done.stderr


def test_gastrohun_csv_layout_maps_landmark_codes(tmp_path, sample_dir) -> None:
    image = sorted(sample_dir.rglob("*.jpg"))[0]
    root = tmp_path / "gastrohun"
    root.mkdir()
    rows = ["filename,label"]
    for code in ("A1", "G4", "L2", "NA", "Q9"):
        (root / f"{code}.jpg").write_bytes(image.read_bytes())
        rows.append(f"{code}.jpg,{code}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    dataset, report = import_tree(root, labelset="egd30", layout="gastrohun")
    assert sorted(EGD30.labels[r.label].key for r in dataset.records) == ["antrum_anterior", "fundus_greater"]
    assert "L2" in report.grouped and set(report.unmapped) == {"NA", "Q9"}
