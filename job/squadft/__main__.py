from squadft.cli import main

main()
