"""The plain-Triton baseline's second step (bench/ocr_overhead.py): read every crop of a request with the
same recognition variant class a jigsaw runner loads, in one call."""
import io
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from jigsawserve.triton_backend import runners
from jigsawserve.triton_backend.tensors import TensorSpec


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(json.loads(args["model_config"])["parameters"]["bench"]["string_value"])
        self.run = runners.build(cfg["runtime"], [TensorSpec("IMAGE", "UINT8", (-1, -1, 3))],
                                 [TensorSpec("TEXT", "BYTES", ()), TensorSpec("SCORE", "FP32", ())])

    def execute(self, requests):
        responses = []
        for request in requests:
            crops = pb_utils.get_input_tensor_by_name(request, "CROPS").as_numpy().reshape(-1)
            items = [{"IMAGE": np.load(io.BytesIO(c), allow_pickle=False)} for c in crops]
            answers = self.run.infer(items) if items else []
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("TEXT", np.array([a["TEXT"].item() for a in answers], dtype=np.object_).reshape(-1)),
                pb_utils.Tensor("SCORE", np.array([a["SCORE"] for a in answers], dtype=np.float32).reshape(-1))]))
        return responses
