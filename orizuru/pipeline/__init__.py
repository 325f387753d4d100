"""`orizuru run`: one pipeline file, every stage chained, hashed, skipped or resumed, and a report card."""
