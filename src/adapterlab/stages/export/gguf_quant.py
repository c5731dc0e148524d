"""Quantise a 16-bit GGUF to Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 in pure Python (the ``gguf`` package), no compiler.

It makes the file llama.cpp's ``llama-quantize`` makes from the same f16/bf16 GGUF (that tool is compiled, and
nothing here compiles): every tensor the converter stored as f16/bf16 (the weight matrices) is quantised to the
type; norms and other 1-D tensors stay f32; a row that is not a whole number of blocks stays as it is. One
difference: for the 4- and 5-bit types the output projection (the token embedding where the two are tied) is stored
as Q8_0 where llama-quantize would pick Q6_K, a K-quant that ``gguf`` cannot write; both keep the tensor that decides
every next token more precise than the rest. ``gguf``'s Q8_0 is byte-identical to llama.cpp's.
"""

from __future__ import annotations

from pathlib import Path

from adapterlab.console import console

QUANTS = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")


def tensor_type(name: str, current, target, row: int, output_name: str):
    """The type a tensor gets in the quantised file."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if current not in (GGMLQuantizationType.F16, GGMLQuantizationType.BF16):
        return current
    if name == output_name and target != GGMLQuantizationType.Q8_0:
        target = GGMLQuantizationType.Q8_0
    block = GGML_QUANT_SIZES[target][0]
    return target if row % block == 0 else current


def quantize(source: Path, out: Path, quant: str) -> Path:
    """``source`` (a 16-bit GGUF written by llama.cpp's converter) -> ``out`` with its weights in ``quant``."""
    import gguf

    target = gguf.GGMLQuantizationType[quant.upper()]
    reader = gguf.GGUFReader(source)
    names = {t.name for t in reader.tensors}
    output_name = "output.weight" if "output.weight" in names else "token_embd.weight"  # tied embeddings
    writer = gguf.GGUFWriter(out, reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    copy_metadata(reader, writer, file_type=gguf.LlamaFileType[f"MOSTLY_{quant.upper()}"])
    with console.status(f"Quantising {source.name} to {quant} ...") as status:
        for i, tensor in enumerate(reader.tensors, 1):
            status.update(f"Quantising {source.name} to {quant}: tensor {i}/{len(reader.tensors)}")
            new_type = tensor_type(tensor.name, tensor.tensor_type, target, int(tensor.shape[0]), output_name)
            if new_type == tensor.tensor_type:
                writer.add_tensor(tensor.name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=new_type)
                continue
            floats = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            writer.add_tensor(tensor.name, gguf.quants.quantize(floats, new_type), raw_dtype=new_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    writer.close()
    return out


def copy_metadata(reader, writer, file_type) -> None:
    """Every key-value of ``reader`` into ``writer`` (as gguf's own gguf_new_metadata.py does), new file type."""
    import gguf

    for field in reader.fields.values():
        # The architecture and the GGUF.* header fields are written by GGUFWriter itself.
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        value = int(file_type) if field.name == gguf.Keys.General.FILE_TYPE else field.contents()
        writer.add_key_value(field.name, value, value_type, sub_type=sub_type)
