"""The plain-Triton baseline's first step (bench/ocr_overhead.py): decode the image, detect text with the
same variant class a jigsaw runner loads, crop the boxes with the same adapter, and send the crops on as
one BYTES tensor (each crop ``np.save``d): a Python-backend model of an ordinary ensemble."""
import io
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from jigsawserve.triton_backend import runners
from jigsawserve.triton_backend.adapters import crop_boxes, decode_image
from jigsawserve.triton_backend.tensors import TensorSpec


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(json.loads(args["model_config"])["parameters"]["bench"]["string_value"])
        self.crop = cfg["crop"]
        self.run = runners.build(cfg["runtime"], [TensorSpec("IMAGE", "UINT8", (-1, -1, 3))],
                                 [TensorSpec("BOXES", "FP32", (-1, 4, 2)), TensorSpec("SCORES", "FP32", (-1,))])

    def execute(self, requests):
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            (item,) = decode_image({"IMAGE": raw[0]}, {})
            (found,) = self.run.infer([item])
            crops = []
            for crop in crop_boxes(item, found, **self.crop):
                buf = io.BytesIO()
                np.save(buf, crop["IMAGE"], allow_pickle=False)
                crops.append(buf.getvalue())
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("CROPS", np.array(crops, dtype=np.object_).reshape(-1))]))
        return responses
