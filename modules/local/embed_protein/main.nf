process EMBED_PROTEIN {
    // '[gpu]' in the tag marks GPU tasks in the trace, timeline and report.
    tag "${meta.id} [gpu]"
    label 'process_gpu'
    container 'ghcr.io/virnucpro/virnucpro:0.1.0-cuda'

    input:
    tuple val(meta), path(protein)
    path models

    output:
    tuple val(meta), path("${meta.shard}.esm2.safetensors")   , emit: features
    path "versions.yml"                                        , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    // --device auto: the GPU from CUDA_VISIBLE_DEVICES, else a free one claimed by lock file
    def args = task.ext.args ?: ''
    """
    virnucpro embed-protein ${protein} --models ${models} --outdir . ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        virnucpro: \$(virnucpro --version | sed 's/^virnucpro //')
    END_VERSIONS
    """

    stub:
    """
    touch ${meta.shard}.esm2.safetensors

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        virnucpro: 0.1.0
    END_VERSIONS
    """
}
