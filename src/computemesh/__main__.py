from computemesh.cli.main import app

app(prog_name="cmesh")
