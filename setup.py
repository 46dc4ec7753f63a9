from setuptools import find_packages, setup

# The folders stay at the checkout's root; installed, they live under the distribution's namespace
# (jigsawserve.orchestrator, ...), where no other project's ``tools`` collides with them.
FOLDERS = ("orchestrator", "triton_backend", "tools", "model_repository_templates")

setup(
    name="jigsawserve",
    version="0.1.0",
    description="Serving compound inference (task graphs of ML models) on GPU slices with Triton",
    packages=[f"jigsawserve.{p}" for p in find_packages(include=[f"{f}*" for f in FOLDERS])]
    + ["jigsawserve.model_repository_templates"],
    package_dir={f"jigsawserve.{f}": f for f in FOLDERS},
    package_data={"jigsawserve.model_repository_templates": ["*.j2"]},
    python_requires=">=3.10",
    install_requires=[
        "numpy<2",
        "highspy>=1.7",
        "pyyaml>=6",
        "jinja2>=3",
        "click>=8",
        "prometheus-client>=0.17",
        "matplotlib>=3.5",
        "nvidia-ml-py>=12",
        "tritonclient[all]>=2.40",
        "nvidia-pytriton>=0.5",
    ],
    extras_require={
        # kubernetes-validate ships the Kubernetes JSON schemas in its wheel (22 MB): tests/test_k8s.py runs offline
        "test": ["pytest>=7", "hypothesis>=6", "onnx>=1.15", "jsonschema>=4.23", "kubernetes-validate>=1.33"],
        # typed variants from ONNX files; the OCR example's PP-OCRv4 / PP-OCRv6 weights ship inside the rapidocr
        # wheels (located there at plan/render time, never copied); with numpy<2 pip picks opencv 4.11
        "ocr": ["onnxruntime>=1.16", "rapidocr-onnxruntime==1.4.4", "rapidocr==3.10.0"],
        # serving across nodes (orchestrator/serving/ray_cluster.py; the front door's HTTP side is aiohttp); 2.60.0 is the version tested
        "cluster": ["ray[default]>=2.60", "aiohttp>=3.10"],
    },
    entry_points={"console_scripts": ["jigsaw=jigsawserve.orchestrator.cli:run"]},
)
