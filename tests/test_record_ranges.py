"""Ranges of a structure file read by another process give exactly the file's own records."""

from __future__ import annotations

import pickle

import pytest

from xas_bluesky.science.record_ranges import RecordRange, read_range, record_ranges
from xas_bluesky.science.structures import (
    StructureError,
    StructureLimits,
    read_records,
    structures_from_records,
)

WATER = "3\n{name}\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n"
METHANOL = (
    "6\n{name}\nC -0.0469 0.6625 0\nO -0.0469 -0.7575 0\nH -1.0796 0.9743 0\n"
    "H 0.4395 1.0880 0.8813\nH 0.4395 1.0880 -0.8813\nH 0.8689 -1.0792 0\n"
)


def _outcome(records, edge="O"):
    """Each record's name and what it becomes: a SMILES or the error's message."""
    built = structures_from_records([r for _, r in records], edge)
    return [
        (name, str(b) if isinstance(b, StructureError) else b.smiles)
        for (name, _), b in zip(records, built, strict=True)
    ]


def _by_ranges(path, chunk, skip=0, limits=StructureLimits()):
    ranges = list(record_ranges(path, chunk, skip, limits))
    out = []
    for rr in ranges:
        rr = pickle.loads(pickle.dumps(rr))  # what a task carries
        out.extend(read_range(rr, "O", limits))
    return ranges, out


def _xyz_file(tmp_path):
    frames = []
    for k in range(23):
        frames.append((METHANOL if k % 3 else WATER).format(name=f"m{k:02d}"))
    frames[4] = "5\ntruncated\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n"  # then the next frame
    frames[7] = "x\nO 0 0 0\n"  # no atom count: read goes on at the next plausible frame
    frames[9] = "3\n\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n"  # unnamed: m_<frame>
    frames[12] = "2\nextra\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n"  # more atom lines
    frames[15] = "40\nbig\n" + "H 0 0 0\n" * 40  # over the atom limit
    path = tmp_path / "m.xyz"
    path.write_text("\n".join(frames))  # blank lines between frames too
    return path


@pytest.mark.parametrize("chunk", [1, 4, 7, 100])
def test_xyz_ranges_read_as_the_whole_file(tmp_path, chunk):
    path = _xyz_file(tmp_path)
    limits = StructureLimits(max_atoms=30)
    whole = _outcome(list(read_records(path, "O", limits)))
    ranges, parts = _by_ranges(path, chunk, limits=limits)
    assert _outcome(parts) == whole
    assert any("truncated frame" in o for _, o in whole)  # the damaged frames are there
    assert any(n.startswith("m_") for n, _ in whole)
    assert sum(r.n_records for r in ranges) == len(whole)
    assert all(r.n_records == chunk for r in ranges[:-1])
    assert [r.first_record for r in ranges] == list(range(0, len(whole), chunk))
    assert all(a.end == b.start for a, b in zip(ranges, ranges[1:], strict=False))


def test_ranges_skip_the_records_already_done(tmp_path):
    path = _xyz_file(tmp_path)
    whole = _outcome(list(read_records(path, "O")))
    ranges, parts = _by_ranges(path, 5, skip=8)
    assert ranges[0].first_record == 8
    assert _outcome(parts) == whole[8:]
    assert list(record_ranges(path, 5, skip=len(whole))) == []


def test_smiles_ranges_keep_names_and_lines(tmp_path):
    path = tmp_path / "m.smi"
    lines = ["SMILES name", "CCO ethanol", "", "# a comment", "CO", "C=O formaldehyde", "CC", "OC=O",
             "xx bad", "  ", "CC(=O)O acetic"]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    whole = _outcome(list(read_records(path, "O")))
    for chunk in (1, 2, 3):
        ranges, parts = _by_ranges(path, chunk)
        assert _outcome(parts) == whole
    assert ("smi_5", "CO") in whole  # an unnamed line keeps the file's line number


def test_sdf_ranges(tmp_path):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    path = tmp_path / "m.sdf"
    w = Chem.SDWriter(str(path))
    for k, smi in enumerate(["CCO", "CO", "C=O", "OCCO", "CC(=O)O"]):
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        AllChem.EmbedMolecule(mol, randomSeed=k)
        if k != 2:
            mol.SetProp("_Name", f"s{k}")
        w.write(mol)
    w.close()
    whole = _outcome(list(read_records(path, "O")))
    assert len(whole) == 5 and whole[2][0] == "m_3"
    for chunk in (1, 2, 5):
        _, parts = _by_ranges(path, chunk)
        assert _outcome(parts) == whole


def test_a_changed_file_is_an_error(tmp_path):
    path = _xyz_file(tmp_path)
    rr = next(iter(record_ranges(path, 6)))
    path.write_text(WATER.format(name="only"))
    with pytest.raises(StructureError, match="did the file change"):
        read_range(rr)
    with pytest.raises(StructureError, match="cannot read"):
        read_range(RecordRange(str(tmp_path / "gone.xyz"), 0, 10, 0, 0, 1))
