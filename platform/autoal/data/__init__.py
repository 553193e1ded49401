"""The data layer: what a pool is (ids, features, labels, split), its Parquet format, and the sources it comes from. numpy and pyarrow; no Ray, no torch."""
