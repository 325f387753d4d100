"""`orizuru demo`: every stage on the shipped sample data; nothing else imports this package."""
