"""`spkid export`: a model's ONNX form, run by onnxruntime without torch (`spkid.onnxexport`, `spkid.onnxnet`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spkid.errors import SpkidError

app = typer.Typer(rich_markup_mode=None)


@app.command()
def export(
    model: Annotated[str, typer.Argument(metavar="MODEL",
                                         help="Model file written by `spkid train`, `resemblyzer`, or a published "
                                              "model of another toolkit (a folder, file or `spkid models` name).")],
    output: Annotated[str | None, typer.Option("--output", "-o", metavar="FILE.onnx",
                                               help="The ONNX file to write (default: MODEL with the suffix .onnx, "
                                                    "beside it).")] = None,
) -> None:
    """Write the ONNX form of a model: batch and length dynamic, the model's record in its metadata.

    The record holds the model's config (architecture, features, embedding windows, calibration) and its
    identity (sha256), the same as the model file's, so galleries and embeddings made with either form
    interoperate. The export is checked before it is written: onnxruntime must give torch's embeddings.
    `embed`, `enroll`, `verify` and `identify` run a model through onnxruntime, without torch, when they are
    given the .onnx file, or the model file with its ONNX form beside it (MODEL.onnx, the default here).

    \b
    Examples:
      spkid export model.pt                      # writes model.onnx; `-m model.pt` now runs it
      spkid export resemblyzer -o ge2e.onnx
      spkid export voxceleb_resnet34_LM/ -o resnet34.onnx    # a WeSpeaker model folder
    """
    if output is None:
        if model == "resemblyzer":
            raise SpkidError("give -o FILE.onnx for the resemblyzer encoder")
        output = str(Path(model).with_suffix(".onnx"))
    if Path(output).resolve() == Path(model).resolve():
        raise SpkidError(f"-o {output}: would overwrite the model file itself; name an .onnx file")
    from spkid import onnxexport

    onnxexport.export(model, output)
