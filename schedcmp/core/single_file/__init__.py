"""Single-file checkpoints: the original-layout ``.safetensors`` (or, opted in, ``.ckpt``) files of A1111 and
ComfyUI, loaded as SD 1.x / 2.x and SDXL pipelines (``loader.load_single_file``)."""
