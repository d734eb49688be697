"""Library errors name the option field a caller set; the command line names its flag (issue 20,
item 3): one table, stream.cli.flags.FLAGS, maps one onto the other."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import cer_stream

from stream import FaceOptions, FileSource, FusionOptions, Pipeline, PipelineOptions, SceneOptions
from stream.cli.flags import FLAGS, flag_names
from stream.cli.main import run_parser
from stream.runtime import options as options_module


def test_the_table_maps_real_fields_onto_real_flags():
    flags = {flag for action in run_parser()._actions for flag in action.option_strings}
    for field, flag in FLAGS.items():
        cls, name = field.split(".")
        assert name in {f.name for f in dataclasses.fields(getattr(options_module, cls))}, field
        assert flag in flags, flag


def test_flag_names_rewrites_fields_and_their_values_only():
    assert flag_names('FusionOptions.compound = "pfsa" needs (FusionOptions.calibration)') == (
        "--compound pfsa needs (--fusion)"
    )
    assert flag_names("ClipOptions.image and ClipOptions.labels") == "--clip-image and --clip-labels"
    assert flag_names("x.FaceOptions.weights, FaceOptions.weightsy") == "x.FaceOptions.weights, FaceOptions.weightsy"


def test_a_pipeline_caller_sees_the_fields_it_set(sample):
    opts = PipelineOptions(modalities=["face"], fusion=FusionOptions(compound="pfsa"))
    with Pipeline(opts) as pipeline, pytest.raises(ValueError) as err:
        pipeline.prepare(FileSource(sample))
    message = str(err.value)
    assert message.startswith('FusionOptions.compound = "pfsa" needs a calibration')
    assert "FusionOptions.calibration" in message and "--" not in message
    with pytest.raises(ValueError, match=r"^SceneOptions\.key_env must name"):
        SceneOptions(url="http://127.0.0.1:9/v1", key_env=" ")
    with pytest.raises(ValueError, match=r"^FaceOptions\.weights names one model's weights"):
        Pipeline(PipelineOptions(face=FaceOptions(model="ensemble", weights="w.pt")))


def test_the_command_line_names_its_flags(sample, tmp_path):
    proc = cer_stream("--video", str(sample), "--no-asr", "--compound", "pfsa")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "cer-stream: error: --compound pfsa needs a calibration with PFSA prototypes "
        "(--fusion: a file from `cer-stream calibrate`)"
    ]
    missing = tmp_path / "missing.pt"
    proc = cer_stream("--video", str(sample), "--no-asr", "--profile", "paper", "--face-weights", str(missing))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"cer-stream: error: emoaffectnet-resnet50: --face-weights {missing}: no such file or folder"
    ]
