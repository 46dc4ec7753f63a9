from setuptools import find_packages, setup

setup(
    name="jigsawserve",
    version="0.1.0",
    description="Serving compound inference (task graphs of ML models) on GPU slices with Triton",
    packages=[*find_packages(include=["orchestrator", "orchestrator.*", "triton_backend", "triton_backend.*", "tools"]),
              "model_repository_templates"],
    package_data={"model_repository_templates": ["*.j2"]},
    python_requires=">=3.10",
    install_requires=[
        "numpy<2",
        "cvxpy>=1.5",
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
        "test": ["pytest>=7", "hypothesis>=6", "onnx>=1.15"],
        # typed variants from ONNX files; the OCR example's PP-OCRv4 / PP-OCRv6 weights ship inside the rapidocr
        # wheels (located there at plan/render time, never copied); with numpy<2 pip picks opencv 4.11
        "ocr": ["onnxruntime>=1.16", "rapidocr-onnxruntime==1.4.4", "rapidocr==3.10.0"],
    },
    entry_points={"console_scripts": ["jigsaw=orchestrator.cli:run"]},
)
