"""One module per ``brevitas-ldm`` subcommand, plus the options they share."""
