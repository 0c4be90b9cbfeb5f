"""rtfeatures: real-time ML features as Apache Beam pipelines (also shipped to workers)."""

from setuptools import find_packages, setup

setup(
    name="rtfeatures",
    version="0.1.0",
    description="Real-time ML features: Kafka -> Beam (Flink) -> Redis, correct by event time",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["pipelines*", "transforms*", "runtime*", "schemas*",
                                    "serving*"]),
    entry_points={"console_scripts": ["rtf-sdk-worker = runtime.sdk_worker:main"]},
    package_data={"schemas": ["*.avsc", "*.json"], "transforms": ["lua/*.lua"]},
    install_requires=[
        "apache-beam[gcp]==2.77.0",
        # schemaregistry: the registry client (and its authlib) for --schema_registry_url.
        "confluent-kafka[schemaregistry]>=2.3,<3",
        "redis>=5,<9",
        "fastavro>=1.9,<2",
    ],
    extras_require={
        # gcp-storage-emulator: the local GCS server the gs:// tests read and write.
        "test": ["pytest>=8", "pytest-timeout>=2", "hypothesis>=6", "ruff>=0.6",
                 "gcp-storage-emulator>=2024.8"],
        # benchmarks/ (make bench): plots; profiles use the stdlib's cProfile.
        "bench": ["matplotlib>=3.8,<4"],
    },
)
