"""Graph edits. Each pass takes a ModelProto, edits a copy, and returns it with a list of what it did."""
