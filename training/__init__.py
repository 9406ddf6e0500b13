"""genserve offline training: data -> nn code -> train -> evaluate -> export."""
