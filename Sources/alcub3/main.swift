import Commands

await Alcub3Command.main(arguments: Array(CommandLine.arguments.dropFirst()))
