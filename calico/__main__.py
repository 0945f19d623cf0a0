from calico.cli import main

main()
