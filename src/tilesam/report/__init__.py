"""What people look at: benchmark tables and figures."""
