process MODELS_DEMO {
    tag "demo"
    label 'process_single'
    container 'ghcr.io/virnucpro/virnucpro:0.1.0-cpu'

    output:
    path "models"      , emit: models
    path "versions.yml", emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    virnucpro models demo models --threads ${task.cpus} ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
    \$(virnucpro versions --indent 4)
    END_VERSIONS
    """

    stub:
    """
    mkdir -p models/dnabert-s
    touch models/esm2.pt models/classifier_300.safetensors models/classifier_500.safetensors
    touch models/dnabert-s/config.json models/dnabert-s/model.safetensors models/dnabert-s/tokenizer.json

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        virnucpro: 0.1.0
    END_VERSIONS
    """
}
