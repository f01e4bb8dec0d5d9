#!/usr/bin/env python3
"""Asks a model over the Open Inference Protocol with NVIDIA's tritonclient, once with JSON
tensors and once with the binary tensor extension (its default); prints both answers as JSON.

  python3 scripts/tritonclient_check.py HOST:PORT MODEL ROWS_JSON [API_KEY]

With an API key (the gateway), every call carries `Authorization: Bearer API_KEY`.
"""
import json, sys

import numpy as np
import tritonclient.http as httpclient

url, model, rows = sys.argv[1], sys.argv[2], np.array(json.loads(sys.argv[3]), dtype=np.float32)
headers = {"Authorization": f"Bearer {sys.argv[4]}"} if len(sys.argv) > 4 else None
client = httpclient.InferenceServerClient(url=url)
assert client.is_server_live() and client.is_model_ready(model, headers=headers)
out = {"inputs": [i["name"] for i in client.get_model_metadata(model, headers=headers)["inputs"]]}
for binary in (False, True):
    tensor = httpclient.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    wanted = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
    answer = client.infer(model, [tensor], outputs=wanted, headers=headers)
    out["binary" if binary else "json"] = {
        "label": answer.as_numpy("label").tolist(),
        "probabilities": answer.as_numpy("probabilities").tolist(),
    }
print(json.dumps(out))
