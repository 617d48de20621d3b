from spkid.cli import main

main()
