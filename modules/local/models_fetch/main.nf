process MODELS_FETCH {
    tag "fetch"
    label 'process_single'
    label 'process_network'
    // storeDir (conf/modules.config): downloaded once into --model_cache, reused by later runs
    container 'ghcr.io/virnucpro/virnucpro:0.1.0-cpu'

    output:
    path "virnucpro_models", emit: models
    path "versions.yml"    , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    virnucpro models fetch --cache virnucpro_models ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
    \$(virnucpro versions --indent 4)
    END_VERSIONS
    """

    stub:
    """
    mkdir -p virnucpro_models/dnabert-s
    touch virnucpro_models/esm2.pt virnucpro_models/classifier_300.safetensors virnucpro_models/classifier_500.safetensors
    touch virnucpro_models/dnabert-s/config.json virnucpro_models/dnabert-s/model.safetensors virnucpro_models/dnabert-s/tokenizer.json

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        virnucpro: 0.1.0
    END_VERSIONS
    """
}
