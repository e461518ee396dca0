"""Reading and writing files: model loading, data sets, file-format sniffing and atomic outputs."""
