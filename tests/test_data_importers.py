"""Importers: each public layout, built tiny in tmp_path, becomes a valid manifest."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from xray_generator.data import importers
from xray_generator.data.importers import (
    IU_TERMS,
    NIH_LABELS,
    import_indiana,
    import_kermany,
    import_nih,
    import_rsna,
    iu_labels,
    iu_report,
    kermany_patient_id,
    nih_labels,
    parse_age_years,
    rsna_labels,
)
from xray_generator.data.manifest import MANIFEST_COLUMNS, load_manifest
from xray_generator.data.splits import assign_split, check_patient_splits
from xray_generator.vocabulary import KNOWN_LABELS


def _image(path: Path, size: tuple[int, int] = (300, 280), *, mode: str = "L", seed: int = 0) -> Path:
    """A tiny textured image, (width, height); JPEG or PNG by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    ramp = np.linspace(40, 200, width)[None, :] + rng.normal(0, 10, (height, width))
    if mode == "I;16":
        Image.fromarray((ramp * 200).astype(np.uint16)).save(path)
    else:
        Image.fromarray(np.clip(ramp, 0, 255).astype(np.uint8), mode="L").convert(mode).save(path)
    return path


def _check_manifest(manifest, out_dir: Path) -> pd.DataFrame:
    """What every importer promises: schema, files relative to out_dir, patient-wise splits."""
    reloaded = load_manifest(out_dir / "metadata.csv")
    table = reloaded.table
    assert list(table.columns) == list(MANIFEST_COLUMNS)
    assert len(reloaded) == len(manifest)
    assert all((out_dir / f).is_file() for f in table["file"])
    assert not any(Path(f).is_absolute() for f in table["file"])
    check_patient_splits(table)
    for source, patient, split in table[["source", "patient_id", "split"]].itertuples(index=False):
        assert split == assign_split(source, patient)
    assert not list(out_dir.glob(".metadata.csv.*"))  # written atomically, no temp left
    return table.set_index("image_id")


def test_every_mapped_label_is_in_the_vocabulary():
    assert set(NIH_LABELS.values()) <= set(KNOWN_LABELS)
    assert set(IU_TERMS.values()) <= set(KNOWN_LABELS)


# --- Kermany -------------------------------------------------------------------------------


@pytest.fixture()
def kermany_tree(tmp_path) -> Path:
    base = tmp_path / "download" / "chest_xray" / "chest_xray"  # as the Kaggle zip nests it
    _image(base / "train" / "PNEUMONIA" / "person1_bacteria_1.jpeg", mode="RGB")
    _image(base / "test" / "PNEUMONIA" / "person1_virus_7.jpeg", seed=1)  # same child, other folder
    _image(base / "train" / "PNEUMONIA" / "person22_virus_54.jpeg", seed=2)
    _image(base / "train" / "NORMAL" / "IM-0117-0001.jpeg", seed=3)
    _image(base / "val" / "NORMAL" / "NORMAL2-IM-0096-0001.jpeg", seed=4)
    _image(base / "val" / "NORMAL" / "IM-0117-0001.jpeg", seed=5)  # duplicate file name
    _image(base / "test" / "NORMAL" / "NORMAL2-IM-0097-0001.jpeg", (200, 120), seed=6)  # too small for 256
    (base / "train" / "NORMAL" / ".DS_Store").write_bytes(b"junk")
    return tmp_path / "download"


def test_kermany_patient_ids_follow_the_card():
    assert kermany_patient_id("person123_virus_245.jpeg") == "kermany-person123"
    assert kermany_patient_id("IM-0117-0001.jpeg") == "kermany-IM-0117"
    assert kermany_patient_id("NORMAL2-IM-0096-0001-0002.jpeg") == "kermany-NORMAL2-IM-0096"


def test_kermany_in_place(kermany_tree, caplog):
    manifest = import_kermany(kermany_tree)
    table = _check_manifest(manifest, kermany_tree)
    assert len(table) == 6  # the duplicate name is kept once
    assert "duplicate image id" in caplog.text
    assert table.loc["kermany_person1_bacteria_1", "labels"] == "Pneumonia; Bacterial pneumonia"
    assert table.loc["kermany_person22_virus_54", "labels"] == "Pneumonia; Viral pneumonia"
    assert table.loc["kermany_IM-0117-0001", "labels"] == "Normal"
    # first in sorted path order wins (test < train < val)
    assert table.loc["kermany_IM-0117-0001", "file"] == "chest_xray/chest_xray/train/NORMAL/IM-0117-0001.jpeg"
    # the same child from the release's train and test folders lands in one split
    person1 = table[table["patient_id"] == "kermany-person1"]
    assert len(person1) == 2 and person1["split"].nunique() == 1
    assert set(table["view"]) == {"AP"}
    assert set(table["license"]) == {importers.KERMANY.license}
    assert set(table["source"]) == {"pneumonia_kermany"}
    assert table.loc["kermany_person1_bacteria_1", "native_px"] == 280  # shorter side, unconverted


def test_kermany_converted_to_256_png(kermany_tree, tmp_path, caplog):
    out = tmp_path / "converted"
    manifest = import_kermany(kermany_tree / "chest_xray", out, convert=True)
    table = _check_manifest(manifest, out)
    assert "kermany_NORMAL2-IM-0097-0001" not in table.index  # never upsampled: skipped
    assert "under 256 px" in caplog.text
    assert set(table["native_px"]) == {256}
    for rel in table["file"]:
        assert rel.startswith("images/pneumonia_kermany/") and rel.endswith(".png")
        with Image.open(out / rel) as image:
            assert image.mode == "L" and image.size == (256, 256)


def test_kermany_missing_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="train/val/test"):
        import_kermany(tmp_path)


# --- Indiana University ------------------------------------------------------------------------


@pytest.fixture()
def indiana_tree(tmp_path) -> Path:
    root = tmp_path / "iu"
    root.mkdir()
    pd.DataFrame(
        {
            "uid": ["1", "2", "3"],
            "MeSH": ["normal", "Cardiomegaly/borderline;Pulmonary Artery/enlarged", "Opacity/lung/base;Pleural Effusion/right"],
            "Problems": ["normal", "Cardiomegaly;Pulmonary Artery", "Opacity;Pleural Effusion"],
            "image": ["Xray Chest PA and Lateral", "Chest, 2 views, frontal and lateral", "AP portable chest"],
            "indication": ["Positive TB test", "Preop", "Dyspnea"],
            "comparison": ["None.", "None.", ""],
            "findings": ["The lungs are clear.\nNo effusion.", "Borderline cardiomegaly.", ""],
            "impression": ["Normal chest x-XXXX.", "No acute pulmonary findings.", ""],
        }
    ).to_csv(root / "indiana_reports.csv", index=False)
    pd.DataFrame(
        {
            "uid": ["1", "1", "2", "2", "3", "3"],
            "filename": [
                "1_IM-0001-4001.dcm.png",
                "1_IM-0001-3001.dcm.png",
                "2_IM-0652-1001.dcm.png",
                "2_IM-0652-2001.dcm.png",
                "3_IM-1384-1001.dcm.png",
                "3_IM-1384-2001.dcm.png",
            ],
            "projection": ["Frontal", "Lateral", "Frontal", "Frontal", "Frontal", "Lateral"],
        }
    ).to_csv(root / "indiana_projections.csv", index=False)
    for name in ("1_IM-0001-4001", "1_IM-0001-3001", "2_IM-0652-1001", "2_IM-0652-2001", "3_IM-1384-1001"):
        _image(root / "images_normalized" / f"{name}.dcm.png", (260, 300))
    return root


def test_iu_label_mapping():
    assert iu_labels("normal", "normal") == "Normal"
    assert iu_labels("Cardiomegaly/borderline;Pulmonary Artery/enlarged", "Cardiomegaly") == "Cardiomegaly"
    assert iu_labels("Pulmonary Atelectasis/base/left;Thickening/pleura/apex") == "Atelectasis; Pleural thickening"
    assert iu_labels("Opacity/lung;Calcified Granuloma") == ""
    assert iu_labels("normal;Pneumonia/upper lobe") == "Pneumonia"
    assert iu_labels("No Indexing", "No Indexing") == ""


def test_iu_report_joins_sections():
    assert iu_report("Clear lungs.\n", "Normal.") == "Findings: Clear lungs. Impression: Normal."
    assert iu_report("", "Normal.") == "Impression: Normal."
    assert iu_report(None, "") == ""


def test_indiana_frontal_only_with_reports(indiana_tree, caplog):
    manifest = import_indiana(indiana_tree)
    table = _check_manifest(manifest, indiana_tree)
    # 4 frontal rows; uid 3's lateral file and uid 1's lateral are excluded
    assert sorted(table.index) == ["iu_1_IM-0001-4001", "iu_2_IM-0652-1001", "iu_2_IM-0652-2001", "iu_3_IM-1384-1001"]
    first = table.loc["iu_1_IM-0001-4001"]
    assert first["labels"] == "Normal"
    assert first["report"] == "Findings: The lungs are clear. No effusion. Impression: Normal chest x-XXXX."
    assert first["report_kind"] == "radiology_report"
    assert first["view"] == "PA" and first["patient_id"] == "iu-1"
    assert first["license"] == "CC BY-NC-ND 4.0 (as distributed by Open-i)"
    assert first["file"] == "images_normalized/1_IM-0001-4001.dcm.png"
    assert table.loc["iu_2_IM-0652-1001", "labels"] == "Cardiomegaly"
    assert table.loc["iu_2_IM-0652-1001", "view"] == "frontal"
    third = table.loc["iu_3_IM-1384-1001"]
    assert third["labels"] == "Pleural effusion" and third["view"] == "AP"
    assert pd.isna(third["report"]) and third["report_kind"] == "none"
    assert table.loc[["iu_2_IM-0652-1001", "iu_2_IM-0652-2001"], "split"].nunique() == 1


def test_indiana_skips_missing_images_and_needs_both_csvs(indiana_tree, caplog):
    (indiana_tree / "images_normalized" / "2_IM-0652-2001.dcm.png").unlink()
    manifest = import_indiana(indiana_tree, indiana_tree / "out")
    assert len(manifest) == 3
    assert "skipped 1 frontal image" in caplog.text
    assert manifest.table["file"].str.startswith("../images_normalized/").all()
    (indiana_tree / "indiana_projections.csv").unlink()
    with pytest.raises(FileNotFoundError, match="indiana_projections.csv"):
        import_indiana(indiana_tree)


# --- NIH ChestX-ray14 --------------------------------------------------------------------------


@pytest.fixture()
def nih_tree(tmp_path) -> Path:
    root = tmp_path / "nih"
    root.mkdir()
    rows = [
        ("00000001_000.png", "Cardiomegaly", "0", "1", "058Y", "M", "PA"),
        ("00000001_001.png", "Cardiomegaly|Emphysema", "1", "1", "58", "M", "PA"),
        ("00000002_000.png", "No Finding", "0", "2", "81", "F", "AP"),
        ("00000003_000.png", "Effusion|Pleural_Thickening|Pneumonia", "0", "3", "414", "F", "PA"),
        ("00000004_000.png", "Hernia", "0", "4", "40", "M", "PA"),  # image not downloaded
    ]
    pd.DataFrame(
        rows,
        columns=["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender", "View Position"],
    ).assign(**{"OriginalImage[Width": "2500", "Height]": "2048"}).to_csv(root / "Data_Entry_2017.csv", index=False)
    for i, (name, *_rest) in enumerate(rows[:4]):
        _image(root / f"images_00{1 + i // 2}" / "images" / name, (256, 256), mode="I;16" if i == 0 else "L", seed=i)
    return root


def test_nih_labels_and_ages():
    assert nih_labels("No Finding") == "Normal"
    assert nih_labels("Effusion|Cardiomegaly") == "Cardiomegaly; Pleural effusion"
    assert parse_age_years("058Y") == 58 and parse_age_years("6M") == 0.5
    assert parse_age_years("414") is None and parse_age_years("") is None


def test_nih_import(nih_tree, caplog):
    manifest = import_nih(nih_tree)
    table = _check_manifest(manifest, nih_tree)
    assert len(table) == 4 and "skipped 1 row" in caplog.text
    assert table.loc["nih_00000001_001", "labels"] == "Cardiomegaly; Emphysema"
    assert table.loc["nih_00000002_000", "labels"] == "Normal"
    assert table.loc["nih_00000003_000", "labels"] == "Pneumonia; Pleural effusion; Pleural thickening"
    assert table.loc["nih_00000001_000", "age"] == 58 and pd.isna(table.loc["nih_00000003_000", "age"])
    assert table.loc["nih_00000002_000", ["sex", "view"]].tolist() == ["F", "AP"]
    assert table.loc["nih_00000001_000", "patient_id"] == "nih-1"
    assert table.loc[["nih_00000001_000", "nih_00000001_001"], "split"].nunique() == 1
    assert set(table["source"]) == {"nih_cxr14"} and set(table["license"]) == {importers.NIH.license}
    assert table.loc["nih_00000002_000", "file"] == "images_002/images/00000002_000.png"


def test_nih_convert_handles_16_bit(nih_tree, tmp_path):
    out = tmp_path / "nih_png"
    manifest = import_nih(nih_tree, out, convert=True, size=128)
    table = _check_manifest(manifest, out)
    with Image.open(out / table.loc["nih_00000001_000", "file"]) as image:
        pixels = np.asarray(image)
    assert image.mode == "L" and pixels.shape == (128, 128)
    assert pixels.min() < 10 and pixels.max() > 245  # percentile window used the full 8-bit range


# --- RSNA pneumonia -----------------------------------------------------------------------


def test_rsna_label_rule():
    assert rsna_labels(1) == "Pneumonia"
    assert rsna_labels(0) == "Normal"
    assert rsna_labels(0, "Normal") == "Normal"
    assert rsna_labels(0, "No Lung Opacity / Not Normal") == ""


def test_rsna_processed_layout(tmp_path):
    root = tmp_path / "rsna"
    root.mkdir()
    pd.DataFrame(
        {
            "patientId": ["aaa-1", "bbb-2", "bbb-2", "ccc-3", "ddd-4"],
            "x": ["", "10", "200", "", ""],
            "y": ["", "20", "200", "", ""],
            "width": ["", "50", "30", "", ""],
            "height": ["", "60", "30", "", ""],
            "Target": ["0", "1", "1", "0", "0"],
            "age": ["45", "62", "62", "", "30"],
            "sex": ["F", "M", "M", "", "F"],
        }
    ).to_csv(root / "stage2_train_metadata.csv", index=False)
    for i, pid in enumerate(["aaa-1", "bbb-2", "ccc-3"]):
        _image(root / "Training" / "Images" / f"{pid}.png", (256, 256), seed=i)
    manifest = import_rsna(root)
    table = _check_manifest(manifest, root)
    assert sorted(table.index) == ["rsna_aaa-1", "rsna_bbb-2", "rsna_ccc-3"]  # ddd-4 has no image
    assert table.loc["rsna_aaa-1", "labels"] == "Normal"
    assert table.loc["rsna_bbb-2", "labels"] == "Pneumonia"  # two box rows, one image
    assert table.loc["rsna_bbb-2", ["sex", "age"]].tolist() == ["M", 62]
    assert table.loc["rsna_aaa-1", "patient_id"] == "rsna-aaa-1"
    assert table.loc["rsna_aaa-1", "file"] == "Training/Images/aaa-1.png"
    assert set(table["license"]) == {importers.RSNA.license}


def _dicom(path: Path, pixels: np.ndarray, **header: str) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PhotometricInterpretation = header.pop("photometric", "MONOCHROME2")
    for key, value in header.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_rsna_challenge_layout_with_dicom(tmp_path):
    root = tmp_path / "rsna_challenge"
    root.mkdir()
    pd.DataFrame({"patientId": ["p1", "p2"], "x": ["", ""], "y": ["", ""], "width": ["", ""], "height": ["", ""], "Target": ["0", "1"]}).to_csv(
        root / "stage_2_train_labels.csv", index=False
    )
    pd.DataFrame({"patientId": ["p1", "p2"], "class": ["No Lung Opacity / Not Normal", "Lung Opacity"]}).to_csv(
        root / "stage_2_detailed_class_info.csv", index=False
    )
    gradient = np.tile(np.linspace(0, 4000, 160), (150, 1))  # dark left, bright right
    _dicom(root / "stage_2_train_images" / "p1.dcm", gradient, PatientAge="045Y", PatientSex="F", ViewPosition="PA")
    _dicom(root / "stage_2_train_images" / "p2.dcm", gradient, PatientAge="007Y", PatientSex="M", ViewPosition="AP", photometric="MONOCHROME1")

    with pytest.raises(ValueError, match="convert=True"):
        import_rsna(root)
    out = tmp_path / "rsna_png"
    manifest = import_rsna(root, out, convert=True, size=128)
    table = _check_manifest(manifest, out)
    assert pd.isna(table.loc["rsna_p1", "labels"])  # abnormal but not pneumonia: no label
    assert table.loc["rsna_p2", "labels"] == "Pneumonia"
    assert table.loc["rsna_p1", ["sex", "age", "view"]].tolist() == ["F", 45, "PA"]
    with Image.open(out / table.loc["rsna_p1", "file"]) as plain, Image.open(out / table.loc["rsna_p2", "file"]) as inverted:
        plain_px, inverted_px = np.asarray(plain, dtype=int), np.asarray(inverted, dtype=int)
    assert plain_px[:, 0].mean() < plain_px[:, -1].mean()
    assert inverted_px[:, 0].mean() > inverted_px[:, -1].mean()  # MONOCHROME1 shown with bone bright


def test_cli_imports_a_folder(kermany_tree, tmp_path, capsys):
    out = tmp_path / "cli_out"
    assert importers.main(["kermany", str(kermany_tree), "--out", str(out)]) == 0
    assert "6 images" in capsys.readouterr().out
    assert (out / "metadata.csv").is_file()
