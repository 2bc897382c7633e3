module sticky.example/worker

go 1.19
