"""The data verbs of the `voxtune` command: synth, prepare, visualize and their exit codes."""
import json

import pytest

from voxtune.cli import main


def _one_line_error(capsys):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_synth_prepare_visualize(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "msd"), "--cases", "3", "--shape", "16", "16", "16",
                 "--test-cases", "1"]) == 0
    assert main(["prepare", "--source", str(tmp_path / "msd"), "--out", str(tmp_path / "c"),
                 "--labels", "regions", "--split", "0.34", "0.33", "0.33", "--shape", "16", "16", "12"]) == 0
    out = capsys.readouterr().out
    assert "prepared 3 cases" in out and "manifest.json" in out
    assert main(["visualize", "--cache", str(tmp_path / "c"), "--case", "BRATS_002",
                 "--out", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").is_file()


def test_prepare_some_failed_exit_1(msd_copy, tmp_path, capsys):
    (msd_copy / "labelsTr" / "BRATS_007.nii.gz").unlink()
    assert main(["prepare", "--source", str(msd_copy), "--out", str(tmp_path / "c")]) == 1
    captured = capsys.readouterr()
    assert "case BRATS_007: label file ./labelsTr/BRATS_007.nii.gz is missing" in captured.err
    assert "prepared 7 cases" in captured.out and "1 failed" in captured.out


@pytest.mark.parametrize("argv", [
    ["prepare", "--source", "{tmp}/none", "--out", "{tmp}/c"],
    ["prepare", "--source", "{msd}", "--out", "{tmp}/c", "--split", "0.5", "0.5", "0.5"],
    ["synth", "--out", "{tmp}/s", "--cases", "0"],
    ["visualize", "--cache", "{tmp}/none", "--case", "BRATS_001", "--out", "{tmp}/x.png"],
    ["visualize", "--cache", "{cache}", "--case", "BRATS_001", "--out", "{tmp}/x.bmp"],
])
def test_bad_input_exit_2(argv, tmp_path, msd_dir, cache_dir, capsys):
    argv = [a.format(tmp=tmp_path, msd=msd_dir, cache=cache_dir) for a in argv]
    assert main(argv) == 2
    assert _one_line_error(capsys).startswith(f"voxtune {argv[0]}: error: ")


def test_bad_dataset_json_exit_2(msd_copy, tmp_path, capsys):
    meta = json.loads((msd_copy / "dataset.json").read_text())
    del meta["training"]
    (msd_copy / "dataset.json").write_text(json.dumps(meta))
    assert main(["prepare", "--source", str(msd_copy), "--out", str(tmp_path / "c")]) == 2
    assert 'dataset.json: key "training" is missing' in _one_line_error(capsys)


def test_rerun_other_settings_exit_2(msd_dir, cache_copy, capsys):
    assert main(["prepare", "--source", str(msd_dir), "--out", str(cache_copy), "--labels", "regions"]) == 2
    assert "choose another --out" in _one_line_error(capsys).lower()


def test_own_data_prints_the_plan_and_names_each_bad_case(tmp_path, capsys):
    """A prostate task (two modalities) with three broken cases: one line each naming the case and what is
    wrong; the other cases prepared, the plan printed before them."""
    import nibabel as nib
    import numpy as np

    msd = tmp_path / "Task05_Prostate"
    assert main(["synth", "--task", "prostate", "--out", str(msd), "--cases", "6", "--test-cases", "0",
                 "--shape", "24", "24", "8"]) == 0
    image = nib.load(str(msd / "imagesTr" / "prostate_00.nii.gz"))  # one channel where dataset.json lists two
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[..., 0], image.affine), str(msd / "imagesTr" / "prostate_00.nii.gz"))
    label = nib.load(str(msd / "labelsTr" / "prostate_01.nii.gz"))  # a value dataset.json does not list
    values = np.asarray(label.dataobj).copy()
    values[0, 0, 0] = 5
    nib.save(nib.Nifti1Image(values, label.affine), str(msd / "labelsTr" / "prostate_01.nii.gz"))
    label = nib.load(str(msd / "labelsTr" / "prostate_02.nii.gz"))  # the label off the image's grid
    shifted = label.affine.copy()
    shifted[2, 3] += 4.0
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), shifted), str(msd / "labelsTr" / "prostate_02.nii.gz"))
    capsys.readouterr()
    assert main(["prepare", "--source", str(msd), "--out", str(tmp_path / "c")]) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 3 and "Traceback" not in err
    assert any(line.startswith("case prostate_00: ") and "one channel, where dataset.json's \"modality\" lists 2" in line for line in lines)
    assert any(line.startswith("case prostate_01: ") and "values [5]" in line for line in lines)
    assert any(line.startswith("case prostate_02: ") and "different affines" in line for line in lines)
    assert "plan (auto)" in out and "anisotropic" in out and "labels     classes: pz (1), tz (2)" in out
    assert "prepared 3 cases" in out and "3 failed" in out
